#!/usr/bin/env bash
# One go on a GPU machine (prepared for an H200; ~6-8 min): the CUDA tests of nondeep.inference and
# nondeep.parallel, then docs/results/latency-gpu.{json,md} (ParNet-S/M/L/XL vs ResNet-18/34/50/101 at 224,
# batch 1 and 64, and the 28x28 family; every form, float32 and float16; every graph replay's output checked
# against the eager model; the models of a suite side by side). Cut short by BENCH_TIMEOUT, it leaves
# latency-gpu-partial.json (the suites that finished, 224 first; `bench_latency.py --render` writes its markdown).
#
#   OUT=$OUT bash benchmarks/latency_gpu.sh          # results and the test log go to $OUT (default docs/results)
#
# Environment: PYTHON (default python) with a CUDA build of torch, torchvision and pytest; TEST_TIMEOUT,
# BENCH_TIMEOUT (s).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-docs/results}
mkdir -p "$OUT"
export PYTHONPATH=src
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu-info.txt"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" \
    | tee -a "$OUT/gpu-info.txt" || exit 1
# The CUDA tests first, on a clock: their failure is recorded, and the measurement still runs.
timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -rs tests/test_inference.py tests/test_bench_parallel.py -k "gpu or cuda" \
    > "$OUT/gpu-tests.txt" 2>&1
echo "CUDA tests exit $?" | tee -a "$OUT/gpu-tests.txt"
tail -3 "$OUT/gpu-tests.txt"
timeout "${BENCH_TIMEOUT:-420}" $PY benchmarks/bench_latency.py --device cuda --out "$OUT" "$@"
echo "bench exit $?"
