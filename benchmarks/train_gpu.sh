#!/usr/bin/env bash
# One go on a GPU machine for issue 14 (prepared for an H200; ~11 min, so two calls of the device's 10 min:
# STEPS="tests throughput", then STEPS=speedrun): the CUDA training tests, the trainer's throughput in each
# speed option against a bare loop (docs/results/train_throughput.*), then the speedrun at a cut budget (recipe,
# batch 256 or 1024, and schedule, 8 12 16 epochs, chosen on validation with 1 tuning seed; 10 measured seeds;
# docs/results/speedrun.*, and speedrun-runs.tgz: its runs without checkpoints). Tried on a CPU (DEVICE=cpu ...,
# 2026-11-30): every step runs and writes its files. Fashion-MNIST must be where NONDEEP_DATA points.
#
#   OUT=$OUT NONDEEP_DATA=fmnist bash benchmarks/train_gpu.sh
#
# Environment: PYTHON (default python) with a CUDA build of torch; DEVICE (default cuda; cpu for a smoke test
# with SAMPLES=2400 GRID="1" SEEDS=2: a batch of 1024 needs more than 512 images); STEPS (default "tests
# throughput speedrun"); ROUNDS (throughput rounds, default 3); TEST_TIMEOUT, TP_TIMEOUT, SPEEDRUN_TIMEOUT (s).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-docs/results}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONPATH=src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu-info.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" \
    | tee -a "$OUT/gpu-info.txt"
STEPS=" ${STEPS:-tests throughput speedrun} "
step() { [[ "$STEPS" == *" $1 "* ]]; }
if step tests; then
    timeout "${TEST_TIMEOUT:-120}" $PY -m pytest -q -rs tests/test_step.py tests/test_ema.py tests/test_train_options.py \
        -k "cuda or gpu or ema" > "$OUT/train-gpu-tests.txt" 2>&1
    echo "CUDA training tests exit $?" | tee -a "$OUT/train-gpu-tests.txt"
fi
if step throughput; then  # the report is written after every round: a timeout keeps the rounds that finished
    timeout "${TP_TIMEOUT:-200}" $PY benchmarks/bench_train_throughput.py --device "$DEVICE" \
        --samples "${SAMPLES:-32768}" --epochs 2 --rounds "${ROUNDS:-3}" \
        --variants default channels_last compile-reduce-overhead --out "$OUT"
    echo "throughput exit $?"
fi
step speedrun || exit 0
# shellcheck disable=SC2086  # GRID is a list of epoch counts
# --compile: CUDA graphs (compile_mode auto), compiled once per recipe by an untimed warm-up run, then reused
timeout "${SPEEDRUN_TIMEOUT:-420}" $PY -m nondeep.cli speedrun --device "$DEVICE" --epoch-grid ${GRID:-8 12 16} \
    --config configs/speedrun_b256.yaml configs/speedrun_b1024.yaml \
    --tune-seeds 1 --seeds "${SEEDS:-10}" ${SAMPLES:+--max-train-samples $SAMPLES} --compile \
    --out "runs/speedrun-$DEVICE" --results "$OUT" --no-progress
echo "speedrun exit $?"
# Its runs' JSON, CSV and YAML (no checkpoints), even when cut short: `nondeep speedrun --out` on this folder
# elsewhere reuses every finished run and writes the report.
tar czf "$OUT/speedrun-runs.tgz" --exclude='*.safetensors' -C runs "speedrun-$DEVICE" && echo "speedrun runs kept"
