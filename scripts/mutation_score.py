"""The mutation score of a sample of a module's mutants, with its exact 95% interval, from a table of them.

    python scripts/mutation_score.py docs/mutation/train_loop-sample.tsv

The table has one mutant a line, tab-separated: its name, mutmut's status, and for a survivor a verdict and why
(scripts/mutation.sh writes the first two columns of a sampled run; the verdicts are judged by hand, as
docs/testing.md says). Verdicts:
  killed-by-hand  fails a test of the module's files when applied by hand (a test mutmut did not run on it)
  killed-since    fails a test added after the sampled tree
  equivalent      no input can tell it apart
  gpu-only        only a GPU (or several) can tell it apart: equivalent on the CPU where the suite runs
  code-removed    the mutated code was removed as redundant: no longer a mutant
  gap             a survivor no test kills (so is one without a verdict)
The score is killed / (decided - equivalent - gpu-only - code-removed); its interval (Clopper-Pearson, scipy's
binomtest) says where the module's whole score lies, as far as a random sample of its mutants can tell."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from scipy.stats import binomtest

KILLED_STATUSES = {"killed", "timeout", "segfault"}  # mutmut's: a test failed, hung or crashed on the mutant
UNDECIDED_STATUSES = {"not checked"}
KILLED_VERDICTS = {"killed-by-hand", "killed-since"}
EXCLUDED_VERDICTS = {"equivalent", "gpu-only", "code-removed"}
GAP = "gap"


def score(rows: list[list[str]]) -> dict[str, float | int]:
    """Counts of a table's decided mutants, and the fraction killed of those that can be killed, with its CI."""
    decided = [row for row in rows if row[1] not in UNDECIDED_STATUSES]
    verdicts = Counter(row[2] for row in decided if row[1] not in KILLED_STATUSES and len(row) > 2)
    unknown = set(verdicts) - KILLED_VERDICTS - EXCLUDED_VERDICTS - {GAP}
    if unknown:
        raise ValueError(f"unknown verdicts {sorted(unknown)}: use one of "
                         f"{sorted(KILLED_VERDICTS | EXCLUDED_VERDICTS | {GAP})}")
    killed_by_run = sum(row[1] in KILLED_STATUSES for row in decided)
    killed = killed_by_run + sum(verdicts[v] for v in KILLED_VERDICTS)
    scored = len(decided) - sum(verdicts[v] for v in EXCLUDED_VERDICTS)
    result: dict[str, float | int] = {"mutants": len(rows), "decided": len(decided), "killed_by_run": killed_by_run,
                                      **{v: verdicts[v] for v in sorted(KILLED_VERDICTS | EXCLUDED_VERDICTS)},
                                      "gaps": scored - killed, "killed": killed, "scored": scored}
    if scored:
        low, high = binomtest(killed, scored).proportion_ci(0.95, method="exact")
        result |= {"score": killed / scored, "ci_low": low, "ci_high": high}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path, help="name<TAB>status[<TAB>verdict<TAB>why] a line")
    args = parser.parse_args(argv)
    if not args.table.is_file():
        print(f"mutation_score: error: {args.table} is not a file: pass the table a sampled run wrote", file=sys.stderr)
        return 2
    rows = [line.split("\t") for line in args.table.read_text().splitlines() if line.strip()]
    try:
        s = score(rows)
    except ValueError as err:
        print(f"mutation_score: error: {args.table}: {err}", file=sys.stderr)
        return 2
    print(", ".join(f"{k} {v}" for k, v in s.items() if not isinstance(v, float)))
    if "score" in s:
        print(f"score: {s['killed']} / {s['scored']} = {s['score']:.1%} "
              f"(95% CI [{s['ci_low']:.1%}, {s['ci_high']:.1%}])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
