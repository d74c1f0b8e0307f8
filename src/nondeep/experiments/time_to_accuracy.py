"""Time to accuracy: training seconds until a model's test accuracy, measured at the end of each epoch, first
reaches a target. Models of equal size are compared (parnet_tiny against pre-act ResNet-20 and -56, and
ResNet-18 as a larger reference), each with its schedule chosen on validation:

1. tuning, on validation only: each model trains with each planned epoch count of the grid (the one-cycle
   schedule spans it) and each peak learning rate of the lr grid (default: the recipe's) on the training set
   less the validation split; the schedule whose run reaches the target on validation in the fewest epochs is
   chosen (ties: the shorter schedule, then the higher final validation accuracy; none reached: the schedule
   of the highest final validation accuracy); where the chosen rate sits at an edge of the lr grid, the grid
   grows past that edge (`lr_widen` rates at most, one at a time, each with every epoch count). With
   `tune_seeds` > 1 the grid runs on the first seed and its `finalists` best schedules run again on the next
   seeds (the same validation images; the seed sets the initialisation and the batches); where none of them
   reaches the target on every seed, the next schedules of the first seed's ranking that reached it there join
   them one at a time until one does; the choice among them is made on their means, so one seed's luck does not
   pick the schedule;
2. measuring: with that schedule each model trains on the whole training set with several seeds; the test split
   is evaluated after every epoch, and only to read off when the target was first reached. Every model is tuned
   before the first is measured, so the timed runs follow one another.
Training seconds exclude evaluation. The runs go one after another in one process, the machine's load recorded
beside them; the verdicts compare time to target (Welch interval over the seeds)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from ..report import format_table, write_json, write_text
from ..stats import Difference, estimate, welch
from ..train import TrainConfig
from ._lab import (LR_WIDEN, Budget, LabError, Run, _history, beyond_edge, describe_machine, lab_meta, speed_text,
                   train_run)

NAME = "time_to_accuracy"
DEFAULT_MODELS = ("parnet_tiny", "preact_resnet_20", "preact_resnet_56", "resnet18_small_image")
FINALISTS = 3  # schedules of the first seed run again on the other tuning seeds


def seconds_to_target(history: Sequence[dict[str, float]], target: float) -> tuple[float | None, int | None]:
    """(training seconds until the first epoch whose eval_top1 >= target, that epoch), or (None, None)."""
    seconds = 0.0
    for row in history:
        seconds += row["epoch_seconds"]
        if row["eval_top1"] >= target:
            return seconds, int(row["epoch"])
    return None, None


def run_time_to_accuracy(folder: str | Path, models: Sequence[str] = DEFAULT_MODELS, target: float = 93.0,
                         epoch_grid: Sequence[int] = (2, 4, 8), budget: Budget | None = None,
                         results: str | None = None, command: Sequence[str] = (),
                         lr_grid: Sequence[float] = (), lr_widen: int = LR_WIDEN, tune_seeds: int = 1,
                         finalists: int = FINALISTS) -> dict[str, Any]:
    """Tune each model's schedule (epochs x `lr_grid`, widened by up to `lr_widen` rates past an edge where the
    chosen one sits; no lr grid: the recipe's lr) on validation, its `finalists` best again on `tune_seeds` - 1
    more seeds, then time it to `target` on test over budget.seeds seeds."""
    budget = budget or Budget(seeds=3, max_train_samples=None, threads=1)
    if tune_seeds < 1 or finalists < 1:
        raise LabError(f"tune_seeds and finalists must be >= 1, got {tune_seeds} and {finalists}")
    folder, started = Path(folder), time.perf_counter()
    lr_widen = lr_widen if len(set(lr_grid)) > 1 else 0
    tuning, chosen = [], {}
    for model in models:
        tried = tune_schedules(folder, model, epoch_grid, lr_grid, lr_widen, budget, target, tune_seeds, finalists)
        most = max(t["seeds"] for t in tried)  # the finalists, when several seeds tuned
        chosen[model] = choose_schedule([t for t in tried if t["seeds"] == most])
        tuning += [t | {"chosen": t is chosen[model]} for t in tried]
    rows, seconds = [], {}
    for model in models:  # measuring: all training images, the test split read after each epoch
        epochs, lr = chosen[model]["epochs_planned"], chosen[model]["lr"] if lr_grid else None
        per_seed = []
        for seed in budget.seed_list:
            summary = train_run(folder / "measure", _run(model, epochs, lr), budget, seed, epochs=epochs,
                                val_split=0.0, **_lr(lr))
            reached, epoch = seconds_to_target(_history(Path(summary["out"])), target)
            per_seed.append({"seed": seed, "seconds_to_target": reached, "epoch_reached": epoch,
                             "test_accuracy": summary["test_accuracy"], "train_seconds": summary["train_seconds"]})
        hit = [r["seconds_to_target"] / 60 for r in per_seed if r["seconds_to_target"] is not None]
        seconds[model] = hit if len(hit) == len(per_seed) else None
        minutes = estimate(hit) if hit else None
        rows.append({"model": model, "params": summary["params"], "depth": summary["depth"],
                     "mflops": round(summary["flops"] / 1e6, 2), "epochs_chosen_on_val": epochs,
                     "lr_chosen_on_val": summary["config"]["lr"],
                     "seeds_reaching_target": f"{len(hit)}/{len(per_seed)}", "all_reached": seconds[model] is not None,
                     "minutes_to_target": minutes.mean if minutes else None,
                     "ci95": minutes.half_width if minutes else None,
                     "final_test_accuracy": estimate([r["test_accuracy"] for r in per_seed]).mean, "runs": per_seed})
    reference = models[0]
    comparisons = [welch(seconds[m], seconds[reference], m, reference).as_dict() | {"unit": "minutes"}
                   for m in models[1:] if seconds[m] and seconds[reference]]
    for c in comparisons:
        c["verdict"] = _time_verdict(c)
    report = {"meta": lab_meta(NAME, budget, command or ["nondeep.experiments.time_to_accuracy"], started,
                               target=target, epoch_grid=list(epoch_grid), lr_grid=list(lr_grid),
                               lr_widen=lr_widen, tune_seeds=tune_seeds, finalists=finalists,
                               race_until_reached=True),
              "rows": rows, "tuning": tuning, "comparisons": comparisons}
    _write(report, folder, results)
    return report


def tune_schedules(folder: Path, model: str, epoch_grid: Sequence[int], lr_grid: Sequence[float], lr_widen: int,
                   budget: Budget, target: float, tune_seeds: int = 1, finalists: int = FINALISTS
                   ) -> list[dict[str, Any]]:
    """The tuning rows of one model, ordered by schedule: the grid (widened past an edge) on the first seed, and
    its `finalists` best schedules on `tune_seeds` seeds, their rows holding the means over those seeds."""
    def tune(epochs: int, lr: float | None, seed: int = budget.seed) -> dict[str, Any]:
        return _tune(folder, model, epochs, lr, budget, target, seed)

    tried = [tune(epochs, lr) for epochs in epoch_grid for lr in lr_grid or (None,)]
    rates = list(lr_grid)
    for _ in range(lr_widen):
        lr = beyond_edge(rates, choose_schedule(tried)["lr"])
        if lr is None:
            break
        rates.append(lr)
        tried += [tune(epochs, lr) for epochs in epoch_grid]
    if tune_seeds > 1:
        def race(t: dict[str, Any]) -> dict[str, Any]:
            return combine_seeds([t] + [tune(t["epochs_planned"], t["lr"] if lr_grid else None, budget.seed + i)
                                        for i in range(1, tune_seeds)])

        ranked = rank_schedules(tried)
        raced = [race(t) for t in ranked[:finalists]]
        # no finalist reached the target on every seed: the next schedules that reached it on the first seed
        # join them, one at a time, until one does (a schedule that missed on the first seed cannot)
        for t in ranked[finalists:]:
            if t["val_epoch_reached"] is None or any(r["val_epoch_reached"] is not None for r in raced):
                break
            raced.append(race(t))
        tried = ranked[len(raced):] + raced
    return sorted(tried, key=lambda t: (t["epochs_planned"], t["lr"]))


def _tune(folder: Path, model: str, epochs: int, lr: float | None, budget: Budget, target: float, seed: int
          ) -> dict[str, Any]:
    """One tuning run (validation only) and its row."""
    summary = train_run(folder / "tuning", _run(model, epochs, lr), budget, seed, epochs=epochs, **_lr(lr))
    reached, epoch = seconds_to_target(_history(Path(summary["out"])), target)
    val = {"val_epoch_reached": epoch, "final_val_accuracy": summary["val_accuracy"]}
    return {"model": model, "epochs_planned": epochs, "lr": summary["config"]["lr"], "seeds": 1,
            "val_seconds_to_target": reached, **val, "per_seed": [{"seed": seed, **val}]}


def combine_seeds(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One schedule's tuning rows over several seeds as one row: the mean epoch of reaching the target (None
    unless every seed reached it) and the mean final validation accuracy."""
    epochs = [r["val_epoch_reached"] for r in rows]
    reached = None not in epochs
    return {**rows[0], "seeds": len(rows),
            "val_seconds_to_target": statistics.fmean(r["val_seconds_to_target"] for r in rows) if reached else None,
            "val_epoch_reached": round(statistics.fmean(epochs), 2) if reached else None,
            "final_val_accuracy": round(statistics.fmean(r["final_val_accuracy"] for r in rows), 2),
            "per_seed": [s for r in rows for s in r["per_seed"]]}


def rank_schedules(tried: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tuning rows best first: those that reached the target on validation, in the fewest epochs (an epoch of one
    model costs the same in every schedule, so this compares epochs, not noisy seconds; ties: the shorter
    schedule, then the higher final validation accuracy); then those that did not, by final validation
    accuracy."""
    reached = sorted((t for t in tried if t["val_epoch_reached"] is not None),
                     key=lambda t: (t["val_epoch_reached"], t["epochs_planned"], -t["final_val_accuracy"]))
    return reached + sorted((t for t in tried if t["val_epoch_reached"] is None),
                            key=lambda t: -t["final_val_accuracy"])


def choose_schedule(tried: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The best tuning row (rank_schedules)."""
    return rank_schedules(tried)[0]


def _run(model: str, epochs: int, lr: float | None) -> Run:
    """The run of a schedule; at the recipe's lr its name is the one runs had before lr grids, so a folder's runs
    are reused by a start with an lr grid that holds that rate."""
    return Run(f"{model}-{epochs}ep" + (f"-lr{lr:g}" if lr not in (None, TrainConfig.lr) else ""), model)


def _lr(lr: float | None) -> dict[str, float]:
    return {} if lr is None else {"lr": lr}


def _time_verdict(c: dict[str, Any]) -> str:
    """The verdict on time to target (c: a Welch comparison of a - b in minutes): 'X slower to target than Y by
    x min' with the interval of X - Y (it excludes zero), or 'no detectable difference'."""
    if c["low"] is None:
        return f"{c['a']} vs {c['b']}: one seed on a side, no verdict"
    interval = f"95% CI [{c['low']:+.2f}, {c['high']:+.2f}] min"
    if not c["decided"]:
        return f"{c['a']} vs {c['b']}: no detectable difference in time to target ({c['diff']:+.2f} min, {interval})"
    s = Difference(*(c[k] for k in ("a", "b", "diff", "low", "high", "df", "p_value"))).larger_first()
    return f"{s.a} slower to target than {s.b} by {s.diff:.2f} min (95% CI [{s.low:+.2f}, {s.high:+.2f}] min)"


def _budget_text(meta: dict[str, Any]) -> str:
    """The two phases' budgets (Budget.describe would state its unused `epochs` and a split the measuring lacks)."""
    cap = meta["max_train_samples"]
    precision = speed_text(meta.get("cpu_bf16", False), meta.get("compile", False))
    lrs = f" x peak learning rates {meta['lr_grid']}" if meta.get("lr_grid") else " at the recipe's learning rate"
    if meta.get("lr_grid") and meta.get("lr_widen"):  # absent in reports made before the grid widened itself
        lrs += (f" (where the chosen rate sat at an edge of the grid, up to {meta['lr_widen']} more past it, one at "
                "a time, the grid's ratio continued)")
    schedule = "schedule" if meta.get("lr_grid") else "epoch count"
    seeds = meta.get("tune_seeds", 1)  # absent in reports made before tuning took several seeds
    tuned = (f"seed {meta['seed']}" if seeds == 1 else f"seed {meta['seed']}, then its {meta['finalists']} best "
             f"schedules on seeds {meta['seed']}-{meta['seed'] + seeds - 1}{_racing_text(meta)} (chosen on their "
             "means; the same validation images for every seed)")
    return (f"tuning: epoch counts {meta['epoch_grid']}{lrs}, {tuned}, trained on "
            f"{f'{cap} images of' if cap else 'all of'} the training set less the {meta['val_split']:.0%} held out "
            f"for validation; measuring: each model at its chosen {schedule}, seeds {meta['seed_list']}, trained on "
            f"{f'the first {cap}' if cap else 'all'} training images (no split){precision}")


def _racing_text(meta: dict[str, Any]) -> str:
    """How finalists were added; reports made before racing went on past the finalists say nothing."""
    if not meta.get("race_until_reached"):
        return ""
    return (", joined one at a time by the next schedules that reached the target on the first seed until one "
            "reached it on every seed")


def _write(report: dict[str, Any], folder: Path, results: str | None) -> None:
    meta, rows = report["meta"], report["rows"]
    columns = ["model", "params", "depth", "mflops", "epochs_chosen_on_val", "lr_chosen_on_val",
               "seeds_reaching_target", "minutes_to_target", "ci95", "final_test_accuracy"]
    tuning_columns = ["model", "epochs_planned", "lr", "seeds", "val_epoch_reached", "final_val_accuracy", "chosen"]
    # reports made before the lr grid lack its columns: shown without them
    columns = [c for c in columns if any(c in r for r in rows)]
    tuning_columns = [c for c in tuning_columns if any(c in t for t in report["tuning"])]
    unreached = [r["model"] for r in rows if not r["all_reached"]]
    chosen = "epoch count and peak learning rate" if meta.get("lr_grid") else "epoch count"
    markdown = (f"# Time to {meta['target']}% test accuracy\n\n- command: `{meta['command']}`\n"
                f"- budget: {_budget_text(meta)}\n"
                f"- machine: {describe_machine(meta['machine'])}\n- date: {meta['date']}; took "
                f"{meta['total_seconds'] / 60:.1f} min\n\n{format_table(rows, columns)}\n\n"
                "minutes_to_target: training minutes (evaluation excluded) until the test accuracy measured after an "
                "epoch first reached the target, mean over the seeds that reached it; ci95: half width of its 95% "
                f"interval. The {chosen} of each model {'were' if meta.get('lr_grid') else 'was'} chosen on "
                "validation" + (" (a row of several seeds holds their means; val_epoch_reached is empty unless "
                                "every seed reached the target)" if meta.get("tune_seeds", 1) > 1 else "") + ":\n\n"
                f"{format_table(report['tuning'], tuning_columns)}\n\n"
                + "".join(f"- {c['verdict']}\n" for c in report["comparisons"])
                + (f"\nNot every seed reached the target for: {', '.join(unreached)} (no time comparison for them).\n"
                   if unreached else ""))
    for target in [folder, *([Path(results)] if results else [])]:
        write_json(target / f"{NAME}.json", report)
        write_text(target / f"{NAME}.md", markdown)
    print(format_table(rows, columns))
    for c in report["comparisons"]:
        print(f"- {c['verdict']}")
