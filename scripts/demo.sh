#!/usr/bin/env bash
# Set up a virtual environment and run the demo: generate RadImageNet-, PubMedVision- and VQA-RAD-format
# sources, build and validate radimagenet-vqa and rad-ace-cot (offline stand-in). No data, network
# (beyond the package index) or GPU needed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, in the same command: 2.13.0 is the CPU wheel here (a plain `torch` pulls CUDA builds)
.venv/bin/python -m pip install -q torch==2.13.0 -e '.[train]'
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/radcorpora demo --out "${1:-demo-out}"
