#!/usr/bin/env bash
# Every GPU check of the harness in one run, each under its own time limit, for a machine lent
# for a few minutes: the CUDA tests, both norm-cost modes, the op/sync proxy, the throughput of
# the harness against a plain GPU loop, and a real `harness run` on GPUs with several workers.
# Results go to $OUT (default ./gpu-checks). `DEVICE=cpu QUICK=1` dry-runs the script here.
# The limits add up to under 10 minutes: one command on a lent machine.
# Runs from an installed harness (pip install of the project's wheel and its dependencies).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-checks}
QUICK=${QUICK:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0

check() {  # check NAME SECONDS COMMAND...: one check, its log in $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start))s"
    [ "$rc" -eq 0 ] || status=1
}

if [ "$QUICK" = 1 ]; then
    cost=(--rounds 1 --steps 1 --only batchnorm rbn batch_renorm --model tiny_resnet --batch 4)
    throughput=(--images 100 --rounds 1 --model resnet18 --image-size 32)
else
    cost=(--rounds 3)
    throughput=()
fi
[ "$DEVICE" = cuda ] && nvidia-smi -L

check cuda-tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py tests/test_norm_gpu_ready.py \
    tests/test_norms_in_models.py -x
check norm-ops 40 "$PY" benchmarks/norm_ops.py
check norm-cost-layer 80 "$PY" benchmarks/norm_cost.py --device "$DEVICE" --mode layer "${cost[@]}"
check norm-cost-step 110 "$PY" benchmarks/norm_cost.py --device "$DEVICE" --mode step --amp bf16 --channels-last \
    "${cost[@]}"
[ "$DEVICE" = cuda ] && throughput+=(--amp bf16 --channels-last)  # the harness ignores amp on CPU
check throughput 90 "$PY" benchmarks/classification_throughput.py --device "$DEVICE" "${throughput[@]}"
# Faster R-CNN against mmdet's own Runner: needs mmcv built with its CUDA operators
# (FORCE_CUDA=1 scripts/install_detection.sh), so only with DETECTION=1; its limit is beyond the 10 minutes.
if [ "${DETECTION:-0}" = 1 ]; then
    detection=(--images 200 --scale 1333 800)
    [ "$QUICK" = 1 ] && detection=(--images 8 --rounds 1 --depth 18 --scale 96 96)
    check detection-throughput 150 "$PY" benchmarks/detection_throughput.py --device "$DEVICE" "${detection[@]}"
fi

# The first failure the GPU issue found: a CIFAR suite with several workers on GPUs.
suite="$OUT/gpu-run.toml"
cat >"$suite" <<'TOML'
[suite]
name = "gpu-run"
seeds = [0, 1]
metric = "top1"
baseline = "batchnorm"
[task]
use = "classification"
dataset = "cifar10"
model = "cifar_resnet18"
epochs = 1
batch_size = 32
amp = "bf16"
channels_last = true
[[norm]]
use = "batchnorm"
[[norm]]
use = "rbn"
[[norm]]
use = "batch_renorm"
[[norm]]
use = "groupnorm"
TOML
check harness-run 120 harness run "$suite" --smoke --quiet --workers 3 --out "$OUT/run"
exit $status
