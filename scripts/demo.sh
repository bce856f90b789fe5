#!/usr/bin/env bash
# Set up a virtual environment and run the demo: draw sources in every upstream format the demo corpora read,
# build and validate every registered corpus (LLM stages by the offline stand-in), check
# radimagenet-vqa and radvlm against a tiny model trained on each, write an HTML preview of each build.
# No data, network (beyond the package index) or GPU needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh train
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/radcorpora demo --out "${1:-demo-out}"
