#!/usr/bin/env bash
# Set up a virtual environment with the dev extras and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, in the same command: 2.13.0 is the CPU wheel here (a plain `torch` pulls CUDA builds)
.venv/bin/python -m pip install -q torch==2.13.0 -e '.[train,dev]'
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python -m pytest -q -n 2 "$@"
