"""`nondeep lab summary DIR`: README's lab table, generated from the lab reports (<lab>.json) in a results folder:
per lab its command, budget, machine and date, each model's mean test accuracy with its 95% interval, and the
verdicts the lab computed (first, where a lab ranks its models per compute level, the most accurate of each).
Only the reports of `nondeep lab` commands written with seeds (a `comparisons` list) are read: benchmarks that
share the format (time to accuracy, bench_cpu_bf16.py) have their own sections."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import NondeepError
from ._lab import describe_machine


def lab_reports(folder: str | Path) -> list[dict[str, Any]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise NondeepError(f"results folder {folder} does not exist: pass the folder the labs wrote (--results)")
    reports = []
    for path in sorted(folder.glob("*.json")):
        report = json.loads(path.read_text())
        meta = report.get("meta", {}) if isinstance(report, dict) else {}
        if ("comparisons" in report and "rows" in report and "lab" in meta
                and str(meta.get("command", "")).startswith("nondeep lab ")):
            reports.append({**report, "file": path.name})
    return reports


def _latency(row: dict[str, Any]) -> str:
    if not row.get("latency_ms"):
        return ""
    form = row.get("latency_form") or "fused eager"  # reports written before labs chose the fastest form
    return f" ({row['latency_ms']:.2f} ms, {form})"


def summary_table(reports: list[dict[str, Any]]) -> str:
    """A markdown table, one row per report (lab_reports), every figure taken from it."""
    lines = ["| lab | budget | result (test accuracy, mean ± 95% CI over seeds) | verdicts | measured |",
             "|---|---|---|---|---|"]
    for report in reports:
        meta = report["meta"]
        results = "; ".join(f"{r['model']} {r['test_accuracy']:.2f}" + (f" ± {r['ci95']:.2f}" if r.get("ci95") else "")
                            + _latency(r) for r in report["rows"])
        verdicts = "; ".join([*(_leader(e) for e in report.get("leaders", [])),  # labs that rank models per level
                              *(c["verdict"] for c in report["comparisons"])])
        matched = f", matched on {meta['matched']}" if meta.get("matched") else ""
        name = Path(report["file"]).stem  # the lab's name, or another name for a second budget of it
        lines.append(f"| [{name}](docs/results/{name}.md) | {meta['budget_text']}{matched} | {results} | "
                     f"{verdicts} | `{meta['command']}`; {describe_machine(meta['machine'])}; {meta['date'][:10]} |")
    return "\n".join(lines)


def _leader(entry: dict[str, Any]) -> str:
    versus = entry.get("versus_runner_up")
    return (f"most accurate at {entry['level']:g}x: {entry['best']}"
            + (f" ({versus['verdict']})" if versus else ""))


def cmd_summary(args: argparse.Namespace) -> None:
    reports = lab_reports(args.results_dir)
    if not reports:
        raise NondeepError(f"no lab report with seeds in {args.results_dir}: run a lab with --results "
                           f"{args.results_dir} first")
    print(summary_table(reports))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="README's lab table from the lab reports (<lab>.json) in a results folder")
    p.add_argument("results_dir", help="folder holding the labs' JSON reports (e.g. docs/results)")
    p.set_defaults(func=cmd_summary)
