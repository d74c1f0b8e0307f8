"""`nondeep lab pareto RESULTS_DIR`: the accuracy-depth-latency Pareto fronts over every training run under a
folder (each run's summary.json: what `nondeep train`, `quickstart`, `distill`, the labs and the benchmarks
write). Runs are grouped by budget (epochs, training images): accuracies of different budgets do not compare,
so each budget gets its own front. Within a budget, the seeds of one model (same name and arguments) are
pooled into a mean with its 95% interval. The models are timed side by side at batch 1 here, each in its
fastest form (_lab_latency.py), one checkpoint per model, so the latencies compare across budgets. A model is
on its budget's front when no other model of that budget is at least as accurate (mean), as shallow and as
fast, and strictly better in one."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import NondeepError
from ..plots import plot_fronts
from ..report import format_table, write_json, write_text
from ..stats import estimate
from ._lab import add_latency_forms_arg, describe_machine, machine
from ._lab_latency import LATENCY_NOTE, checkpoint_model, fastest_latency

NAME = "pareto"
COLUMNS = ["budget", "model", "seeds", "test_accuracy", "ci95", "depth", "params", "latency_ms", "latency_form",
           "front", "front_acc_latency", "runs"]


def budget_key(summary: dict[str, Any]) -> str:
    images = summary.get("train_images")
    return f"{summary['epochs']} epoch(s) x {images if images is not None else '?'} images"


def collect_runs(folder: str | Path, data: str = "fashion-mnist") -> list[dict[str, Any]]:
    """One row per model and budget under `folder`: the finished runs on `data` whose checkpoint is still there,
    their seeds pooled (mean test accuracy, 95% interval)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NondeepError(f"results folder {folder} does not exist: pass a folder of runs (e.g. runs/)")
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    seen = set()
    for path in sorted(folder.rglob("summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            print(f"skipped {path}: not readable JSON")
            continue
        checkpoint = Path(summary.get("checkpoint", ""))
        if not checkpoint.is_file():
            checkpoint = path.parent / "last.safetensors"  # the run folder was moved
        if (summary.get("data") != data or summary.get("stopped_by") or summary.get("test_accuracy") is None
                or not checkpoint.is_file() or checkpoint.resolve() in seen):
            continue
        seen.add(checkpoint.resolve())
        kwargs = json.dumps(summary.get("config", {}).get("model_kwargs", {}), sort_keys=True)
        groups.setdefault((budget_key(summary), summary["model"], kwargs), []).append(
            {**summary, "checkpoint": str(checkpoint), "run": str(path.parent.relative_to(folder))})
    if not groups:
        raise NondeepError(f"no finished {data} run (summary.json with its checkpoint) under {folder}: train some "
                           "with `nondeep train`, `nondeep quickstart` or a lab first")
    rows = []
    for (budget, model, kwargs), runs in groups.items():
        acc = estimate([r["test_accuracy"] for r in runs])
        label = model if kwargs == "{}" else f"{model} {kwargs}"
        rows.append({"budget": budget, "model": label, "seeds": acc.n, "test_accuracy": acc.mean,
                     "ci95": acc.half_width, "depth": runs[0]["depth"], "params": runs[0]["params"],
                     "checkpoint": runs[0]["checkpoint"], "runs": ", ".join(r["run"] for r in runs)})
    return rows


def dominates(a: dict[str, Any], b: dict[str, Any], keys: Sequence[tuple[str, int]]) -> bool:
    """a is no worse than b in every (key, sign) and better in one; sign +1 = higher is better."""
    no_worse = all(sign * a[k] >= sign * b[k] for k, sign in keys)
    return no_worse and any(sign * a[k] > sign * b[k] for k, sign in keys)


def pareto_front(rows: Sequence[dict[str, Any]], keys: Sequence[tuple[str, int]]) -> list[bool]:
    return [not any(dominates(other, row, keys) for other in rows if other is not row) for row in rows]


def run_pareto_lab(results_dir: str | Path, out: str | Path | None = None, data: str = "fashion-mnist",
                   threads: int | None = None, command: Sequence[str] = (),
                   forms: Sequence[str] | None = None) -> tuple[dict[str, Any], Path]:
    started = time.perf_counter()
    rows = collect_runs(results_dir, data)
    out = Path(out or results_dir)
    keys = [f"{r['budget']} | {r['model']}" for r in rows]
    latency = fastest_latency({k: checkpoint_model(r["checkpoint"]) for r, k in zip(rows, keys)}, threads=threads,
                              forms=forms)
    for row, key in zip(rows, keys):
        row.update(latency[key])
    for budget in {r["budget"] for r in rows}:
        group = [r for r in rows if r["budget"] == budget]
        three = pareto_front(group, [("test_accuracy", 1), ("depth", -1), ("latency_ms", -1)])
        two = pareto_front(group, [("test_accuracy", 1), ("latency_ms", -1)])
        for row, on3, on2 in zip(group, three, two):
            row["front"], row["front_acc_latency"] = on3, on2
    rows.sort(key=lambda r: (r["budget"], r["latency_ms"]))
    report = {"meta": {"lab": NAME, "command": " ".join(command) or f"nondeep lab pareto {results_dir}",
                       "results_dir": str(results_dir), "data": data, "models": len(rows),
                       "budgets": sorted({r["budget"] for r in rows}), "machine": machine(),
                       "date": dt.datetime.now().isoformat(timespec="seconds"),
                       "total_seconds": time.perf_counter() - started},
              "rows": rows}
    write_outputs(report, out)
    return report, out


def write_outputs(report: dict[str, Any], folder: Path) -> None:
    meta, rows = report["meta"], report["rows"]
    write_json(folder / f"{NAME}.json", report)
    write_text(folder / f"{NAME}.md",
               "# Accuracy, depth and latency: the Pareto front of each budget (nondeep lab pareto)\n\n"
               f"- command: `{meta['command']}`\n"
               f"- {meta['models']} models on {meta['data']} under `{meta['results_dir']}`, in "
               f"{len(meta['budgets'])} budget(s): {'; '.join(meta['budgets'])}\n"
               f"- machine: {describe_machine(meta['machine'])}; date {meta['date']}\n\n{format_table(rows, COLUMNS)}\n\n"
               "test_accuracy: mean over the model's runs (seeds) of that budget; ci95: half width of its 95% "
               "Student-t interval (empty for one run). front: not dominated within its budget in (accuracy, "
               "measured depth, latency); front_acc_latency: in (accuracy, latency). " + LATENCY_NOTE + " (on this "
               "machine's CPU).\n")
    plot_fronts(rows, "latency_ms", "test_accuracy", "ci95", "budget", "front_acc_latency", folder / f"{NAME}.png",
                annotate="depth", title=f"{meta['data']}: accuracy vs batch-1 latency, one front per budget "
                "(label: measured depth)", xlabel="batch-1 latency, fastest form (ms)",
                ylabel="test accuracy (%), mean ± 95% CI")


def cmd_pareto(args: argparse.Namespace) -> None:
    command = ["nondeep", "lab", NAME, args.results_dir, *(["--out", args.out] if args.out else []),
               *(["--threads", str(args.threads)] if args.threads else []),
               *(["--latency-forms", *args.latency_forms] if args.latency_forms else [])]
    report, out = run_pareto_lab(args.results_dir, out=args.out, data=args.data, threads=args.threads,
                                 command=command, forms=args.latency_forms)
    print(format_table(report["rows"], COLUMNS))
    print(f"\nwritten under {out}: {NAME}.json, {NAME}.md, {NAME}.png")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="the accuracy-depth-latency Pareto front of each budget over every run under a "
                       "folder (times each model in its fastest form)")
    p.add_argument("results_dir", help="folder searched (recursively) for runs' summary.json")
    p.add_argument("--data", default="fashion-mnist", help="only runs on this dataset (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch CPU threads for the timing (default: torch's choice)")
    p.add_argument("--out", help="where pareto.json/.md/.png go (default: RESULTS_DIR)")
    add_latency_forms_arg(p)
    p.set_defaults(func=cmd_pareto)
