"""`nondeep lab pareto RESULTS_DIR`: the accuracy-depth-latency Pareto front over every training run under a
folder (each run's summary.json: what `nondeep train`, `quickstart` and every lab write). The fused models
are timed side by side at batch 1 here, so the latencies compare; a run is on the front when no other run is
at least as accurate, as shallow and as fast, and strictly better in one of the three.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import NondeepError
from ..plots import plot_front
from ..report import format_table, write_json, write_text
from ._lab import checkpoint_candidate, describe_machine, machine, time_side_by_side

NAME = "pareto"
COLUMNS = ["model", "run", "test_accuracy", "depth", "params", "latency_ms", "front", "front_acc_latency"]


def collect_runs(folder: str | Path, data: str = "fashion-mnist") -> list[dict[str, Any]]:
    """One row per finished run on `data` under `folder` whose checkpoint is still there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NondeepError(f"results folder {folder} does not exist: pass a folder of runs (e.g. runs/)")
    rows, seen = [], set()
    for path in sorted(folder.rglob("summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            print(f"skipped {path}: not readable JSON")
            continue
        checkpoint = Path(summary.get("checkpoint", ""))
        if not checkpoint.is_file():
            checkpoint = path.parent / "last.safetensors"  # the run folder was moved
        if summary.get("data") != data or summary.get("stopped_by") or not checkpoint.is_file():
            continue
        if checkpoint.resolve() in seen:
            continue
        seen.add(checkpoint.resolve())
        rows.append({"model": summary["model"], "run": str(path.parent.relative_to(folder)),
                     "test_accuracy": summary["test_accuracy"], "depth": summary["depth"],
                     "params": summary["params"], "checkpoint": str(checkpoint)})
    if not rows:
        raise NondeepError(f"no finished {data} run (summary.json with its checkpoint) under {folder}: train some "
                           "with `nondeep train`, `nondeep quickstart` or a lab first")
    return rows


def dominates(a: dict[str, Any], b: dict[str, Any], keys: Sequence[tuple[str, int]]) -> bool:
    """a is no worse than b in every (key, sign) and better in one; sign +1 = higher is better."""
    no_worse = all(sign * a[k] >= sign * b[k] for k, sign in keys)
    return no_worse and any(sign * a[k] > sign * b[k] for k, sign in keys)


def pareto_front(rows: Sequence[dict[str, Any]], keys: Sequence[tuple[str, int]]) -> list[bool]:
    return [not any(dominates(other, row, keys) for other in rows if other is not row) for row in rows]


def run_pareto_lab(results_dir: str | Path, out: str | Path | None = None, data: str = "fashion-mnist",
                   threads: int | None = None, command: Sequence[str] = ()) -> tuple[dict[str, Any], Path]:
    started = time.perf_counter()
    rows = collect_runs(results_dir, data)
    out = Path(out or results_dir)
    latency = time_side_by_side([checkpoint_candidate(r["checkpoint"], r["run"]) for r in rows], threads=threads)
    for row in rows:
        row["latency_ms"] = latency[row["run"]]["infer_step_time"]
    three = pareto_front(rows, [("test_accuracy", 1), ("depth", -1), ("latency_ms", -1)])
    two = pareto_front(rows, [("test_accuracy", 1), ("latency_ms", -1)])
    for row, on3, on2 in zip(rows, three, two):
        row["front"], row["front_acc_latency"] = on3, on2
    rows.sort(key=lambda r: r["latency_ms"])
    report = {"meta": {"lab": NAME, "command": " ".join(command) or f"nondeep lab pareto {results_dir}",
                       "results_dir": str(results_dir), "data": data, "runs": len(rows), "machine": machine(),
                       "date": dt.datetime.now().isoformat(timespec="seconds"),
                       "total_seconds": time.perf_counter() - started},
              "rows": rows}
    write_outputs(report, out)
    return report, out


def write_outputs(report: dict[str, Any], folder: Path) -> None:
    meta, rows = report["meta"], report["rows"]
    write_json(folder / f"{NAME}.json", report)
    write_text(folder / f"{NAME}.md",
               "# Accuracy, depth and latency: the Pareto front (nondeep lab pareto)\n\n"
               f"- command: `{meta['command']}`\n"
               f"- {meta['runs']} finished {meta['data']} runs under `{meta['results_dir']}`\n"
               f"- machine: {describe_machine(meta['machine'])}; date {meta['date']}\n\n{format_table(rows, COLUMNS)}\n\n"
               "front: not dominated in (accuracy, measured depth, latency); front_acc_latency: not dominated in "
               "(accuracy, latency). latency_ms: fused model, batch 1, median, all runs timed side by side in "
               "interleaved rounds. Accuracies come from each run's own budget: compare runs of like budgets.\n")
    plot_front(rows, "latency_ms", "test_accuracy", "front_acc_latency", folder / f"{NAME}.png", label="run",
               annotate="depth", title=f"{meta['data']}: accuracy vs batch-1 latency (label: measured depth)",
               xlabel="fused batch-1 latency (ms)", ylabel="test accuracy (%)")


def cmd_pareto(args: argparse.Namespace) -> None:
    command = ["nondeep", "lab", NAME, args.results_dir, *(["--out", args.out] if args.out else []),
               *(["--threads", str(args.threads)] if args.threads else [])]
    report, out = run_pareto_lab(args.results_dir, out=args.out, data=args.data, threads=args.threads,
                                 command=command)
    print(format_table(report["rows"], COLUMNS))
    print(f"\nwritten under {out}: {NAME}.json, {NAME}.md, {NAME}.png")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="the accuracy-depth-latency Pareto front over every run under a folder (times "
                       "each fused model; about a minute for 20 small runs)")
    p.add_argument("results_dir", help="folder searched (recursively) for runs' summary.json")
    p.add_argument("--data", default="fashion-mnist", help="only runs on this dataset (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch CPU threads for the timing (default: torch's choice)")
    p.add_argument("--out", help="where pareto.json/.md/.png go (default: RESULTS_DIR)")
    p.set_defaults(func=cmd_pareto)
