"""A lab's report from its per-seed rows: per model the mean test accuracy with its Student-t interval, the
cost (parameters, FLOPs, measured depth, training steps, latency), whether its validation curve had flattened;
per compared pair the Welch interval of the difference and the verdict computed from it; then <name>.json,
<name>.md, <name>.png (accuracy with error bars) and <name>-curves.png (validation accuracy per epoch)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from ..plots import plot_errorbars, plot_curves
from ..report import format_table, write_json, write_text
from ..stats import estimate, welch
from ._lab import Budget, describe_machine, lab_meta
from .executor import Plan

ACCURACY = "test_accuracy"  # what a lab compares: the final model's test accuracy (nothing chosen on test)
# per-model columns taken from the first seed's row (the same for every seed of a model)
_COST_COLUMNS = ("depth", "params", "fused_params", "mflops", "steps", "train_images")


def aggregate(per_seed: Sequence[dict[str, Any]], latency: dict[str, dict[str, Any]] | None = None,
              extra_columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per model (in first-seen order): its columns, cost, latency and the mean ± 95% CI of the test
    accuracy (final model and the one chosen on validation) over its seeds."""
    models: dict[str, list[dict[str, Any]]] = {}
    for row in per_seed:
        models.setdefault(row["model"], []).append(row)
    rows = []
    for label, runs in models.items():
        first = runs[0]
        acc = estimate([r[ACCURACY] for r in runs])
        chosen = [r["best_test_accuracy"] for r in runs if r.get("best_test_accuracy") is not None]
        row = {"model": label, **{c: first.get(c) for c in extra_columns},
               **{c: first.get(c) for c in _COST_COLUMNS if c in first},
               "seeds": acc.n, ACCURACY: acc.mean, "ci95": acc.half_width, "std": acc.std,
               "accuracy": acc.as_dict(), "chosen_on_val_test_accuracy": estimate(chosen).mean if chosen else None,
               "converged": flattened([r.get("val_curve") or [] for r in runs])}
        if latency is not None and label in latency:
            row.update(latency[label])  # latency_ms and latency_form
        rows.append(row)
    return rows


def flattened(curves: Sequence[Sequence[float]]) -> bool | None:
    """Had the validation curve flattened within the seed noise? The mean gain of the last epoch is at most the
    seeds' standard deviation of the last value. None when it cannot be told (one epoch or one seed)."""
    curves = [c for c in curves if len(c) >= 2]
    if len(curves) < 2:
        return None
    gain = statistics.fmean(c[-1] - c[-2] for c in curves)
    return gain <= statistics.stdev(c[-1] for c in curves)


def compare(per_seed: Sequence[dict[str, Any]], pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Welch interval and verdict of the test-accuracy difference for each (a, b) pair of model labels."""
    values: dict[str, list[float]] = {}
    for row in per_seed:
        values.setdefault(row["model"], []).append(row[ACCURACY])
    return [welch(values[a], values[b], a, b).as_dict() for a, b in pairs]


def lab_report(name: str, budget: Budget, command: Sequence[str], started: float, per_seed: list[dict[str, Any]],
               rows: list[dict[str, Any]], pairs: Sequence[tuple[str, str]], **meta: Any) -> dict[str, Any]:
    """The report a lab publishes: meta (command, budget, machine, date, `meta`), per-model rows, per-seed runs
    and the comparison of each (a, b) in `pairs`."""
    return {"meta": lab_meta(name, budget, command, started, **meta), "rows": rows, "runs": per_seed,
            "comparisons": compare(per_seed, pairs)}


def budget_note(rows: Sequence[dict[str, Any]]) -> str:
    """Whether the budget let the curves flatten, computed from the rows."""
    open_ = [r["model"] for r in rows if r.get("converged") is False]
    unknown = [r["model"] for r in rows if r.get("converged") is None]
    if open_:
        return (f"Budget: the validation curve of {', '.join(open_)} was still rising by more than the seed noise "
                "in the last epoch, so this budget is below convergence for them; a larger one may change the "
                "verdicts.")
    if unknown:
        return "Budget: with one epoch or one seed, convergence cannot be judged."
    return "Budget: every model's validation curve had flattened to within its seed noise by the last epoch."


def publish(report: dict[str, Any], folder: Path, results: str | None, title: str, columns: Sequence[str],
            notes: str, plot: dict[str, Any] | Callable[[dict[str, Any], Path], None]) -> None:
    """Write <name>.json (the whole report), <name>.md (command, budget, machine, date, the table, the verdicts,
    `notes`), <name>.png (`plot`: arguments for plot_errorbars, or a function drawing the report into the path
    it is given) and <name>-curves.png into the lab's folder and `results`; print the table, the verdicts and
    where it went."""
    meta, name, rows = report["meta"], report["meta"]["lab"], report["rows"]
    verdicts = [c["verdict"] for c in report.get("comparisons", [])]
    matched = (f"- matched on: {meta['matched']} (target {meta['match_target']:,}); parameters, FLOPs, measured "
               "depth and training steps of every model are in the table\n" if meta.get("matched") else "")
    table = format_table(rows, list(columns))
    markdown = (f"# {title}\n\n- command: `{meta['command']}`\n- budget: {meta['budget_text']}\n{matched}"
                f"- machine: {describe_machine(meta['machine'])}\n"
                + (f"- runs trained by: {Plan(**meta['execution']).text()}\n" if meta.get("execution") else "")
                + f"- date: {meta['date']}; this start of the lab took {meta['total_seconds'] / 60:.1f} min; its "
                f"runs took {_train_minutes(report):.1f} min in all (training and evaluation; runs reused from an "
                "earlier start included)\n\n"
                f"{table}\n\n{ACCURACY}: mean over the seeds of the final model's test accuracy (%); ci95: half "
                "width of its 95% Student-t interval; chosen_on_val_test_accuracy: the same for the checkpoint "
                "chosen on validation. The test split was read once per run, at its end.\n\n"
                + ("## Verdicts (Welch 95% intervals of the differences)\n\n" + "\n".join(f"- {v}" for v in verdicts)
                   + "\n\n" if verdicts else "") + f"{budget_note(rows)}\n\n{notes}\n")
    for target in [folder, *([Path(results)] if results else [])]:
        write_json(target / f"{name}.json", report)
        write_text(target / f"{name}.md", markdown)
        if callable(plot):
            plot(report, target / f"{name}.png")
        else:
            plot_errorbars(rows, yerr="ci95", path=target / f"{name}.png", **plot)
        plot_curves(_curves(report["runs"]), target / f"{name}-curves.png",
                    title=f"{title}: validation accuracy per epoch (mean ± std over seeds)")
    print(table)
    for v in verdicts:
        print(f"- {v}")
    print(f"\nwritten under {folder}: {name}.json, {name}.md, {name}.png, {name}-curves.png, one run folder per "
          "model and seed" + (f"; copied to {results}" if results else ""))


def _curves(per_seed: Sequence[dict[str, Any]]) -> dict[str, list[list[float]]]:
    curves: dict[str, list[list[float]]] = {}
    for row in per_seed:
        if row.get("val_curve"):
            curves.setdefault(row["model"], []).append(row["val_curve"])
    return curves


def _train_minutes(report: dict[str, Any]) -> float:
    """Minutes of every run of the lab (reused ones included): the sum of the runs' train_seconds, and of the runs
    the report does not list one by one (meta's other_train_seconds: e.g. a mimic lab's teachers and the rates its
    search did not keep)."""
    listed = sum(run.get("train_seconds") or 0.0 for run in report.get("runs", []))
    return (listed + report["meta"].get("other_train_seconds", 0.0)) / 60
