#!/usr/bin/env bash
# One go on a GPU machine for issue 14 (prepared for an H200): the CUDA training tests, the trainer's
# throughput in each speed option against a bare loop (docs/results/train_throughput.*), the speedrun at a cut
# budget (recipe, batch 256 or 1024, and schedule, 8 12 16 epochs, chosen on validation with 1 tuning seed; 10
# measured seeds; docs/results/speedrun.*, speedrun-runs.tgz: its runs without checkpoints) and, on request, the
# best-accuracy recipe (configs/best_parnet_w2.yaml: epochs 30 or 60 chosen on validation, 3 seeds; best/ and
# best-runs.tgz). About 11 min for the first three, so two calls of the device's 10 min: STEPS="tests
# throughput", then STEPS=speedrun; STEPS=best in a third (its time is not yet measured). Tried on a CPU
# (DEVICE=cpu ..., 2026-11-30): every step runs and writes its files. Fashion-MNIST must be where NONDEEP_DATA
# points.
#
#   OUT=$OUT NONDEEP_DATA=fmnist STEPS="tests throughput" bash benchmarks/train_gpu.sh
#
# Environment: PYTHON (default python) with a CUDA build of torch; DEVICE (default cuda; cpu for a smoke test
# with SAMPLES=2400 GRID=1 BEST_GRID=1 SEEDS=2: a batch of 1024 needs more than 512 images); STEPS (default
# "tests throughput speedrun"; also best); ROUNDS (throughput rounds, default 3); TEST_TIMEOUT, TP_TIMEOUT,
# SPEEDRUN_TIMEOUT, BEST_TIMEOUT (s).
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
    timeout "${TEST_TIMEOUT:-120}" $PY -m pytest -q -rs tests/test_step.py tests/test_ema.py \
        tests/test_train_options.py \
        -k "cuda or gpu or ema" > "$OUT/train-gpu-tests.txt" 2>&1
    echo "CUDA training tests exit $?" | tee -a "$OUT/train-gpu-tests.txt"
fi
if step throughput; then  # the report is written after every round: a timeout keeps the rounds that finished
    timeout "${TP_TIMEOUT:-200}" $PY benchmarks/bench_train_throughput.py --device "$DEVICE" \
        --samples "${SAMPLES:-32768}" --epochs 2 --rounds "${ROUNDS:-3}" \
        --variants default channels_last compile-reduce-overhead --out "$OUT"
    echo "throughput exit $?"
fi
# shellcheck disable=SC2086  # GRID and BEST_GRID are lists of epoch counts
if step speedrun; then  # --compile: CUDA graphs (compile_mode auto), compiled once per recipe by a warm-up run
    timeout "${SPEEDRUN_TIMEOUT:-420}" $PY -m nondeep.cli speedrun --device "$DEVICE" --epoch-grid ${GRID:-8 12 16} \
        --config configs/speedrun_b256.yaml configs/speedrun_b1024.yaml \
        --tune-seeds 1 --seeds "${SEEDS:-10}" ${SAMPLES:+--max-train-samples $SAMPLES} --compile \
        --out "runs/speedrun-$DEVICE" --results "$OUT" --no-progress
    echo "speedrun exit $?"
    # Its runs' JSON, CSV and YAML (no checkpoints), even when cut short: `nondeep speedrun --out` on this folder
    # elsewhere reuses every finished run and writes the report.
    tar czf "$OUT/speedrun-runs.tgz" --exclude='*.safetensors' -C runs "speedrun-$DEVICE" && echo "speedrun runs kept"
fi
if step best; then  # issue 14's >= 95.5% at depth 12 under 1.5 M parameters: epochs chosen on validation, 3 seeds
    timeout "${BEST_TIMEOUT:-560}" $PY -m nondeep.cli speedrun --device "$DEVICE" --epoch-grid ${BEST_GRID:-30 60} \
        --config configs/best_parnet_w2.yaml --target 95.5 --time-target 0 --tune-seeds 1 --seeds 3 \
        ${SAMPLES:+--max-train-samples $SAMPLES} --compile --out "runs/best-$DEVICE" --results "$OUT/best" --no-progress
    echo "best accuracy exit $?"
    tar czf "$OUT/best-runs.tgz" --exclude='*.safetensors' -C runs "best-$DEVICE" && echo "best-accuracy runs kept"
fi
