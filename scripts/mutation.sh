#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the modules where issue 20 found gaps, each against its own fast tests.
# Not in CI: it takes hours on 2 cores. Needs mutmut: `.venv/bin/pip install -e ".[mutation]"`.
#
#   scripts/mutation.sh                    # every module below, one after the other
#   scripts/mutation.sh train/optim.py     # one module
#   SAMPLE=150 scripts/mutation.sh train/loop.py   # a seeded random sample of its mutants (SEED, CHUNK, CHILDREN)
#   SINCE=5b2a0f5 scripts/mutation.sh train/loop.py  # only the mutants of lines changed since that commit
#   SINCE=5b2a0f5 SAMPLE=40 scripts/mutation.sh train/loop.py  # a seeded random sample of those
#
# A sample is a prefix of a seeded random order of the module's mutants, run in chunks of CHUNK in that order, so
# a run stopped between chunks has still decided a random sample. The summary lists the sample in sample.tsv
# (name, status) and gives the fraction killed with its exact 95% interval (scripts/mutation_score.py); a survivor
# counts as not killed until its verdict is added to the table by hand. SINCE=REV selects, in the same way, the
# mutants whose mutated line is one that `git diff REV` adds to the module (a re-score of a change, not a sample).
#
# Each module is mutated in its own copy of the committed tree under ${MUTATION_DIR:-/tmp/nondeep-mutation}
# (mutmut rewrites files), and the summary lines go to <copy>/summary.txt; `mutmut results` and
# `mutmut show NAME` run in that copy list and show the survivors. docs/testing.md has the last scores.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
MUTMUT="$(dirname "$PYTHON")/mutmut"
WORK="${MUTATION_DIR:-/tmp/nondeep-mutation}"
SAMPLE="${SAMPLE:-}" SINCE="${SINCE:-}" SEED="${SEED:-20261129}" CHUNK="${CHUNK:-25}" CHILDREN="${CHILDREN:-1}"

# the feature-map tests, without the detectors' training steps (minutes a mutant, and they test torchvision's heads)
FEATURE_TESTS="tests/test_features_detection.py::test_feature_shapes_channels_and_strides
  tests/test_features_detection.py::test_intermediates_match_the_classifier_and_fusion
  tests/test_features_detection.py::test_out_indices_select_and_prune
  tests/test_features_detection.py::test_feature_extractor_still_traces_for_depth"
# the timm tests but the scripting one (torch.jit.script cannot compile mutmut's trampolines: it fails clean)
TIMM_TESTS="$(printf 'tests/test_timm_compat.py::%s ' test_reset_classifier_keeps_device_dtype_and_mode \
  test_global_pool_off_gives_the_unpooled_map test_pruned_parnet_gives_every_parameter_a_gradient \
  test_features_only_out_index_1_has_no_unused_parameter test_prune_head_false_needs_the_head_level \
  test_first_conv_names_a_real_conv test_timm_pretrained_cfg_matches_the_built_model test_timm_create_model_options \
  test_timm_reparameterize_fuses_as_nondeep_does)"
# the trainer's in-process tests (no DDP, no subprocess, no SIGKILL). Every surviving mutant runs them all, so the
# four slowest end-to-end runs of test_train.py (a learning run, a round trip, two of the three SIGTERM points:
# 3.4 of 5.5 minutes) are left out; a survivor is then tried against all of test_train.py by hand.
LOOP_TESTS="tests/test_loop.py tests/test_selection.py tests/test_train_options.py tests/test_step.py
  $(printf 'tests/test_train.py::%s ' 'test_sigterm_checkpoints_and_resume_is_exact[11]' \
  test_existing_run_is_not_overwritten test_config_errors test_class_count_that_does_not_fit_the_checkpoint)
  tests/test_reliability.py::test_nan_loss_stops_with_step_lr_and_checkpoint_or_is_skipped"
# module (under src/nondeep) -> the test files that exercise it
declare -A TESTS=(
  [train/optim.py]="tests/test_optim.py"
  [data/sampling.py]="tests/test_sampling.py tests/test_data.py tests/test_train_options.py::test_build_loaders_shuffles_the_train_split_per_epoch_and_keeps_the_eval_order"
  [data/tensor_loader.py]="tests/test_tensor_loader.py tests/test_data.py"
  [checkpoint.py]="tests/test_checkpoint.py"
  [models/blocks.py]="tests/test_block_structure.py tests/test_reparam.py tests/test_reference_outputs.py"
  [models/parnet.py]="tests/test_parnet.py tests/test_reference_outputs.py $FEATURE_TESTS"
  [data/idx.py]="tests/test_idx.py tests/test_data.py"
  [train/running.py]="tests/test_step.py"
  [train/ema.py]="tests/test_ema.py"
  [train/loop.py]="$LOOP_TESTS"
  [train/config.py]="tests/test_config.py"
  [data/fashion_mnist.py]="tests/test_fashion_mnist.py tests/test_data.py"
  [models/_helpers.py]="tests/test_model_helpers.py"
  [train/evaluate.py]="tests/test_evaluate.py"
  [train/preflight.py]="tests/test_preflight.py"
  [data/folder.py]="tests/test_folder.py tests/test_data.py"
  [data/__init__.py]="tests/test_build_loaders.py tests/test_data.py"
  [data/cifar.py]="tests/test_cifar.py tests/test_data.py"
  [models/features.py]="tests/test_feature_indices.py $FEATURE_TESTS"
  [models/_registry.py]="tests/test_registry.py tests/test_external_models.py"
  [models/wrn.py]="tests/test_wrn.py tests/test_reference_outputs.py $FEATURE_TESTS"
  [models/mimic.py]="tests/test_mimic.py tests/test_reference_outputs.py"
  [models/preact_resnet.py]="tests/test_wrn.py tests/test_reference_outputs.py"
  [models/resnet_small.py]="$TIMM_TESTS tests/test_reference_outputs.py"
)
ORDER=(train/optim.py data/sampling.py data/tensor_loader.py checkpoint.py models/blocks.py models/parnet.py
       data/idx.py train/running.py train/config.py data/fashion_mnist.py
       models/_helpers.py train/evaluate.py train/preflight.py
       data/folder.py models/wrn.py models/mimic.py models/preact_resnet.py models/resnet_small.py
       data/cifar.py data/__init__.py
       models/features.py models/_registry.py train/ema.py train/loop.py)
MODULES=("${@:-${ORDER[@]}}")

for module in "${MODULES[@]}"; do
  tests="${TESTS[$module]:?no tests listed for $module}"
  copy="$WORK/${module//\//_}"
  rm -rf "$copy" && mkdir -p "$copy"
  tree="$(git -C "$ROOT" rev-parse --short HEAD)"
  git -C "$ROOT" archive "$tree" | tar -x -C "$copy"
  {
    echo "[mutmut]"
    echo "source_paths=src/"
    echo "only_mutate=src/nondeep/$module"
    echo "pytest_add_cli_args=-n0"  # in-process: mutmut's hooks see no pytest-xdist worker (pyproject's -n auto)
    echo "pytest_add_cli_args_test_selection="
    for t in $tests; do echo "    $t"; done
    echo "process_isolation=forkserver"  # torch is not fork-safe after pytest has run in the parent
    echo "timeout_constant=60"  # seconds on top of 15x the clean run: 2 busy cores make a test run 10x slower
  } > "$copy/setup.cfg"
  echo "== $module against: $tests"
  start=$(date +%s)
  if [ -z "$SAMPLE$SINCE" ]; then
    (cd "$copy" && OMP_NUM_THREADS=1 "$MUTMUT" run --max-children "$CHILDREN" > run.log 2>&1) || true
  else
    # mutmut generates every mutant and maps the tests before it finds that no name matches: the list is then there
    (cd "$copy" && OMP_NUM_THREADS=1 "$MUTMUT" run no-such-mutant > run.log 2>&1) || true
    : > "$copy/added.txt"
    if [ -n "$SINCE" ]; then
      git -C "$ROOT" diff -U0 "$SINCE" "$tree" -- "src/nondeep/$module" | { grep '^+[^+]' || true; } | cut -c2- \
        > "$copy/added.txt"
    fi
    (cd "$copy" && "$PYTHON" - "src/nondeep/$module" added.txt "$SEED" "${SAMPLE:-0}" "$SINCE" > sample.txt) <<'PY'
import json, random, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
path, added_file, seed, size, since = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
names = sorted(json.load(open(f"mutants/{path}.meta"))["exit_code_by_key"])
added = {line.strip() for line in open(added_file) if line.strip()}
if since:  # the mutants whose mutated (removed) line is one the change added
    names = [name for name in names if any(
        line[1:].strip() in added for line in get_diff_for_mutant(name, path=path).splitlines()
        if line.startswith("-") and not line.startswith("---"))]
sys.stdout.write("".join(f"{name}\n" for name in (random.Random(seed).sample(names, min(size, len(names)))
                                                   if size else names)))
PY
    echo "${SINCE:+changed since $SINCE, }${SAMPLE:+a sample (seed $SEED) of }$(wc -l < "$copy/sample.txt") mutants, chunks of $CHUNK"
    split -l "$CHUNK" -d -a 3 "$copy/sample.txt" "$copy/chunk."
    for chunk in $(find "$copy" -maxdepth 1 -name 'chunk.*' | sort); do  # none when no mutant was chosen
      (cd "$copy" && OMP_NUM_THREADS=1 "$MUTMUT" run --max-children "$CHILDREN" $(cat "$chunk") >> run.log 2>&1) || true
      echo "$(date +%H:%M) done $(basename "$chunk")"
    done
  fi
  (cd "$copy" && "$MUTMUT" results --all true > results.txt 2>&1) || true
  {
    echo "module: src/nondeep/$module"
    echo "tree: $tree"
    echo "tests: $tests"
    echo "minutes: $(( ($(date +%s) - start) / 60 ))"
    for status in killed survived "no tests" timeout suspicious segfault skipped; do
      echo "$status: $(grep -c ": $status\$" "$copy/results.txt" || true)"
    done
    if [ -n "$SAMPLE$SINCE" ]; then  # the sample's rows in its order, for the verdicts on its survivors
      awk 'NR == FNR { status[$1] = $2; next } { print $1 "\t" (($1 in status) ? status[$1] : "not checked") }' \
        FS=': ' <(sed 's/^ *//' "$copy/results.txt") "$copy/sample.txt" > "$copy/sample.tsv"
      echo "sample: $(wc -l < "$copy/sample.txt") of $(grep -c '' "$copy/results.txt"), ${SINCE:+changed since $SINCE, }seed $SEED ($copy/sample.tsv)"
      "$PYTHON" "$ROOT/scripts/mutation_score.py" "$copy/sample.tsv"
    fi
  } | tee "$copy/summary.txt"
done
