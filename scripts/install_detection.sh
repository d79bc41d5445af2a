#!/usr/bin/env bash
# The detection stack: mmdet 3.3 needs mmcv >=2.0,<2.2 with compiled ops, and PyPI has mmcv 2.1.0
# only as source. It compiles once (about 10 minutes on 2 cores); pip caches the wheel afterwards.
# Run by `make setup`; does nothing where mmdet and mmcv's compiled ops already import.
#   - mmcv's setup.py imports pkg_resources: setuptools<81 in the venv, built without isolation;
#   - scripts/cxx20 appends -std=c++20, which torch's headers need and mmcv's setup.py overrides.
# On a CUDA machine, FORCE_CUDA=1 (with nvcc on PATH) compiles the GPU ops as well.
set -euo pipefail
python=${1:-.venv/bin/python}
here=$(cd "$(dirname "$0")" && pwd)
if "$python" -c "import mmdet, mmcv.ops" 2> /dev/null; then
    exit 0
fi
echo "install_detection: compiling mmcv 2.1.0's ops once (about 10 minutes on 2 cores)" >&2
"$python" -m pip install --quiet -c constraints.txt "setuptools<81" wheel ninja  # pinned in constraints.txt
CC="$here/cxx20" CXX="$here/cxx20" MMCV_WITH_OPS=1 FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-2}" \
    "$python" -m pip install --quiet --no-build-isolation -c constraints.txt "mmcv==2.1.0"
"$python" -m pip install --quiet -c constraints.txt "mmdet==3.3.0" pycocotools
