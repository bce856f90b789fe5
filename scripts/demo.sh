#!/usr/bin/env bash
# Set up a virtual environment and run the demo: generate RadImageNet-, PubMedVision- and VQA-RAD-format
# sources, build and validate radimagenet-vqa and rad-ace-cot (offline stand-in), then check
# radimagenet-vqa against a tiny model trained on it. No data, network (beyond the package index) or GPU needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh train
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/radcorpora demo --out "${1:-demo-out}"
