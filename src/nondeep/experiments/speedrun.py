"""`nondeep speedrun`: a depth <= 12 network to a target Fashion-MNIST test accuracy in as few training seconds as
it can (airbench's protocol: a fixed recipe, many seeds, the mean accuracy and the mean time).

Two phases; the test split is read once per measuring run, at its end:
1. choosing the recipe and its schedule, on validation only: for each candidate recipe (one, or several such as
   batch sizes), the epoch counts of the grid, shortest first, each trained with `tune_seeds` seeds of their own
   (seed + TUNING_SEED_OFFSET + i, so that no measured run was picked for its luck) on the training set less the
   validation split; a recipe's schedule is the first epoch count whose mean final validation accuracy reaches
   target + margin (the margin allows for validation reading higher than test); of the recipes that reach it,
   the one whose tuning runs trained in the fewest seconds is chosen (same device, same process); none: the
   recipe best on validation at the longest count, and the report says so;
2. measuring: `seeds` runs with that recipe (seeds seed, seed + 1, ...) on the same training images; each
   run's time is its training seconds, the sum of its epochs' step time (the device synchronised at each
   epoch's end; evaluation and checkpoints excluded; a compiled recipe's compilation is in its first epoch),
   and its accuracy the final model's test accuracy (with the recipe's test-time augmentation).
A compiled recipe is first compiled by an untimed warm-up run of a few steps of the same shapes, as airbench does:
the timed runs reuse the compiled step (a run's first_epoch_seconds shows what is left of it), and the warm-up's
seconds are reported beside them.
The verdicts, computed: mean test accuracy >= target, and mean time <= the time target when there is one.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import measure
from ..models import create_model
from ..report import format_table, write_json, write_text
from ..stats import estimate
from ..train import TrainConfig
from ._lab import Budget, LabError, Run, _history, describe_machine, lab_meta, train_run

NAME = "speedrun"
MAX_DEPTH = 12
# The parnet_tiny Fashion-MNIST recipe (configs/parnet_tiny_fashion.yaml) with flip test-time augmentation and
# channels_last; to be tuned on a GPU (the epoch count is chosen here).
RECIPE: dict[str, Any] = {"model": "parnet_tiny", "batch_size": 256, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9,
                          "nesterov": True, "weight_decay": 5e-4, "schedule": "onecycle", "label_smoothing": 0.1,
                          "crop_padding": 2, "flip": True, "tta_flip": True, "channels_last": True, "amp": True}
DEFAULT_GRID = (4, 6, 8, 12, 16)
TUNING_SEED_OFFSET = 1000
WARMUP_SEED_OFFSET = 2000
WARMUP_STEPS = 4  # enough for torch.compile's first traces and for CUDA graphs to be recorded (reduce-overhead)
GPU_TIME_TARGET = 10.0  # seconds on one GPU (issue 14's target on an H200)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One recipe the speedrun may choose: `name` labels its runs (a config file's stem, or the model's name for
    the built-in RECIPE); `recipe` holds the training fields that differ from TrainConfig's defaults."""
    name: str
    model: str
    model_kwargs: dict[str, Any]
    recipe: dict[str, Any]
    depth: int


def candidate(name: str, config: TrainConfig | None) -> Candidate:
    """The recipe of `config` (None: RECIPE) as a Candidate, its model's depth checked (where, how long, which
    seed and what is printed are the speedrun's)."""
    chosen = config.to_dict() if config is not None else {**TrainConfig().to_dict(), **RECIPE}
    default = TrainConfig().to_dict()
    skip = {"out", "epochs", "seed", "data", "data_dir", "max_train_samples", "val_split", "device", "threads",
            "progress", "model", "model_kwargs"}
    recipe = {k: v for k, v in chosen.items() if k not in skip and v != default[k]}
    return Candidate(name, chosen["model"], chosen["model_kwargs"], recipe,
                     check_depth(chosen["model"], chosen["model_kwargs"]))


def check_depth(model: str, model_kwargs: dict[str, Any]) -> int:
    """The model's measured depth on Fashion-MNIST's input; LabError above MAX_DEPTH (nothing trains)."""
    with torch.device("meta"):
        net = create_model(model, **{"num_classes": 10, "in_chans": 1, **model_kwargs})
    depth = measure.depth(net, (1, 28, 28))
    if depth > MAX_DEPTH:
        raise LabError(f"{model} measures depth {depth}: the speedrun is for networks of depth <= {MAX_DEPTH}; "
                       f"choose another --model or --config")
    return depth


def choose_epochs(tuning: Sequence[dict[str, Any]], bar: float) -> tuple[int, bool]:
    """(the shortest epoch count whose mean validation accuracy reaches `bar`, True), else (the longest, False);
    `tuning`: one row per epoch count, shortest first."""
    for row in tuning:
        if row["val_accuracy"] >= bar:
            return row["epochs"], True
    return tuning[-1]["epochs"], False


def choose_recipe(tuning: Sequence[dict[str, Any]], bar: float) -> tuple[str, int, bool]:
    """(recipe, epochs, True) for the recipe whose chosen schedule reached `bar` in the fewest mean training
    seconds; when none reached it, (the recipe best on validation at its longest count, that count, False).
    `tuning`: rows of recipe, epochs, val_accuracy, train_seconds; each recipe's rows shortest first."""
    names = list(dict.fromkeys(row["recipe"] for row in tuning))
    rows = {name: [row for row in tuning if row["recipe"] == name] for name in names}
    chosen = {name: choose_epochs(rows[name], bar) for name in names}
    picked = {name: next(r for r in rows[name] if r["epochs"] == chosen[name][0]) for name in names}
    reached = [name for name in names if chosen[name][1]]
    if reached:
        name = min(reached, key=lambda n: picked[n]["train_seconds"])
    else:
        name = max(names, key=lambda n: picked[n]["val_accuracy"])
    return name, chosen[name][0], bool(reached)


def run_speedrun(folder: str | Path, config: TrainConfig | dict[str, TrainConfig] | None = None,
                 target: float = 94.0, epoch_grid: Sequence[int] = DEFAULT_GRID, margin: float = 0.5,
                 tune_seeds: int = 2, time_target: float | None = None, budget: Budget | None = None,
                 results: str | None = None, warm_up: bool = True,
                 command: Sequence[str] = ("nondeep", NAME)) -> dict[str, Any]:
    """Choose the recipe and its epoch count on validation (one recipe and a grid of one count are taken as
    given), then train it with budget.seeds seeds and report accuracy and training seconds (mean, spread, 95%
    interval) against the targets; writes speedrun.json/.md to `folder` (and to `results`). `config`: the recipe
    (None: RECIPE), or {name: recipe} of candidates to choose from. Finished runs in `folder` are reused (with or
    without budget.compile: it changes speed only). warm_up: compile each compiled recipe in an untimed warm-up
    run first (False: each timed run's first epoch pays for whatever compilation it needs)."""
    budget = budget or Budget(seeds=10, max_train_samples=None)
    grid = sorted(set(int(e) for e in epoch_grid))
    if not grid or grid[0] < 1:
        raise LabError(f"--epoch-grid takes epoch counts of 1 or more, e.g. 4 6 8, got {list(epoch_grid)}")
    if budget.val_split <= 0:
        raise LabError("the speedrun chooses its schedule on a validation split: --val-split must be above 0")
    if tune_seeds < 1:
        raise LabError(f"--tune-seeds must be at least 1, got {tune_seeds}")
    if not 0 < target <= 100:
        raise LabError(f"--target is a test accuracy in percent, in (0, 100], got {target}")
    configs = config if isinstance(config, dict) else {config.model if config else RECIPE["model"]: config}
    candidates = {name: candidate(name, c) for name, c in configs.items()}
    folder, started = Path(folder), time.perf_counter()
    compiled = {name: budget.compile or bool(c.recipe.get("compile")) for name, c in candidates.items()}
    warmups = [_warm_up(c, budget) for name, c in candidates.items() if warm_up and compiled[name]]

    tuning = []
    for c in candidates.values() if len(grid) > 1 or len(candidates) > 1 else ():  # nothing to choose: no tuning
        for epochs in grid:
            runs = [_train(folder, c, budget, seed, epochs) for seed in
                    range(budget.seed + TUNING_SEED_OFFSET, budget.seed + TUNING_SEED_OFFSET + tune_seeds)]
            tuning.append({"recipe": c.name, "epochs": epochs, "seeds": [r["seed"] for r in runs],
                           "val_accuracy": estimate([r["val_accuracy"] for r in runs]).mean,
                           "val_accuracies": [r["val_accuracy"] for r in runs],
                           "train_seconds": estimate([r["train_seconds"] for r in runs]).mean})
            if tuning[-1]["val_accuracy"] >= target + margin:
                break  # longer schedules are not needed: the shortest that reaches the bar is chosen
    name, chosen, reached = (choose_recipe(tuning, target + margin) if tuning
                             else (next(iter(candidates)), grid[0], None))
    best = candidates[name]

    measured = [_train(folder, best, budget, seed, chosen) for seed in budget.seed_list]
    accuracy = estimate([r["test_accuracy"] for r in measured])
    seconds = estimate([r["train_seconds"] for r in measured])
    report = {"meta": lab_meta(NAME, budget, command, started, model=best.model, model_kwargs=best.model_kwargs,
                               depth=best.depth, recipe=best.recipe, target=target, margin=margin, epoch_grid=grid,
                               tune_seeds=tune_seeds, time_target=time_target, compiled=compiled[name],
                               candidates={n: dataclasses.asdict(c) for n, c in candidates.items()}),
              "warmup": warmups, "tuning": tuning, "chosen_recipe": name, "chosen_epochs": chosen,
              "chosen_reached_bar": reached, "runs": measured, "test_accuracy": accuracy.as_dict(),
              "train_seconds": seconds.as_dict(), "verdicts": verdicts(accuracy, seconds, target, time_target)}
    _write(report, folder, results)
    return report


def _train(folder: Path, c: Candidate, budget: Budget, seed: int, epochs: int) -> dict[str, Any]:
    summary = train_run(folder, Run(f"{c.name}-{epochs}ep", c.model, c.model_kwargs), budget, seed, epochs=epochs,
                        **c.recipe)
    history = _history(Path(summary["out"]))
    return {"recipe": c.name, "seed": seed, "epochs": epochs, "test_accuracy": summary["test_accuracy"],
            "val_accuracy": summary["val_accuracy"], "train_seconds": sum(row["epoch_seconds"] for row in history),
            "first_epoch_seconds": history[0]["epoch_seconds"], "steps": summary["steps"],
            "train_images": summary["train_images"], "device": summary["device"], "out": summary["out"]}


def _warm_up(c: Candidate, budget: Budget) -> dict[str, Any]:
    """One epoch of WARMUP_STEPS full batches of the recipe, in a folder thrown away after: torch.compile
    caches the compiled step in this process, so the timed runs reuse it. Its accuracy is not read."""
    batch = int(c.recipe.get("batch_size", TrainConfig.batch_size))
    images = math.ceil(WARMUP_STEPS * batch / (1 - budget.val_split)) + 1  # the split leaves WARMUP_STEPS batches
    budget = dataclasses.replace(budget, max_train_samples=images, progress=False)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nondeep-warmup-") as tmp:
        summary = train_run(Path(tmp), Run(f"{c.name}-warmup", c.model, c.model_kwargs), budget,
                            budget.seed + WARMUP_SEED_OFFSET, **{**c.recipe, "epochs": 1})
    return {"recipe": c.name, "steps": summary["steps"], "batch_size": batch,
            "seconds": time.perf_counter() - started}


def verdicts(accuracy: Any, seconds: Any, target: float, time_target: float | None) -> list[str]:
    """MET / NOT MET lines from the measured estimates."""
    lines = [f"{'MET' if accuracy.mean >= target else 'NOT MET'}: mean test accuracy {accuracy.mean:.2f}% "
             f"{_interval(accuracy, '%')} >= {target:g}%"]
    if time_target is not None:
        lines.append(f"{'MET' if seconds.mean <= time_target else 'NOT MET'}: mean training time "
                     f"{seconds.mean:.2f} s {_interval(seconds, ' s')} <= {time_target:g} s")
    return lines


def _interval(e: Any, unit: str) -> str:
    if e.low is None:
        return "(one seed: no interval)"
    return f"(95% CI [{e.low:.2f}, {e.high:.2f}]{unit}, sd {e.std:.2f}{unit}, n {e.n})"


def _describe(c: dict[str, Any]) -> str:
    changed = ", ".join(f"{k} {v}" for k, v in c["recipe"].items())
    kwargs = f" {c['model_kwargs']}" if c["model_kwargs"] else ""
    return f"{c['model']}{kwargs}, TrainConfig's defaults" + (f" except {changed}" if changed else "")


def _chosen(report: dict[str, Any], bar: float, several: bool) -> str:
    name, epochs = report["chosen_recipe"], report["chosen_epochs"]
    if not several:
        return (f"{epochs} epochs, the shortest of the grid whose mean validation accuracy reached {bar:g}%"
                if report["chosen_reached_bar"] else
                f"{epochs} epochs: NO epoch count of the grid reached {bar:g}% on validation, so the longest was "
                "measured")
    return (f"{name} at {epochs} epochs: of the recipes whose mean validation accuracy reached {bar:g}% (each at its "
            "shortest such count), the one whose tuning runs trained in the fewest seconds"
            if report["chosen_reached_bar"] else
            f"{name} at {epochs} epochs: NO recipe reached {bar:g}% on validation, so the one best on validation at "
            "its longest count was measured")


def _write(report: dict[str, Any], folder: Path, results: str | None) -> None:
    meta, acc, sec = report["meta"], report["test_accuracy"], report["train_seconds"]
    candidates = meta["candidates"]
    several = len(candidates) > 1
    bar = meta["target"] + meta["margin"]
    tuning = [{"recipe": t["recipe"], "epochs": t["epochs"], "seeds": " ".join(map(str, t["seeds"])),
               "mean_val_accuracy": t["val_accuracy"], "mean_train_seconds": t["train_seconds"]}
              for t in report["tuning"]]
    schedule = ([format_table(tuning, list(tuning[0])[0 if several else 1:]), "",
                 f"Chosen: {_chosen(report, bar, several)}."]
                if tuning else [f"None: the grid held one epoch count, {report['chosen_epochs']}, measured as given "
                                "(not chosen on validation)."])
    recipes = ([f"- recipe: {report['chosen_recipe']}: {_describe(candidates[report['chosen_recipe']])}",
                "- candidates: " + "; ".join(f"{n}: {_describe(c)}" for n, c in candidates.items())]
               if several else [f"- recipe: {_describe(candidates[report['chosen_recipe']])}"])
    runs = [{k: r[k] for k in ("seed", "epochs", "steps", "train_images", "train_seconds", "first_epoch_seconds",
                                "test_accuracy", "val_accuracy")} for r in report["runs"]]
    markdown = "\n".join([
        f"# Speedrun: {meta['model']} (depth {meta['depth']}) to {meta['target']:g}% Fashion-MNIST test accuracy", "",
        f"- command: `{meta['command']}`", *recipes,
        f"- machine: {describe_machine(meta['machine'])}; device {report['runs'][0]['device']}",
        f"- date: {meta['date']}; the whole speedrun (tuning, measuring, evaluations) took "
        f"{meta['total_seconds'] / 60:.1f} min", f"- compilation: {_compilation(report, meta)}", "",
        f"## {'Recipe and schedule' if several else 'Schedule'} chosen on validation", "", *schedule, "",
        f"## Measured: {len(runs)} seeds", "", format_table(runs, list(runs[0])), "",
        _spread("test accuracy (%)", acc, [r["test_accuracy"] for r in runs]),
        _spread("training seconds", sec, [r["train_seconds"] for r in runs]), "",
        *[f"- {line}" for line in report["verdicts"]], "",
        "train_seconds: the sum of the run's epochs' step time (the device synchronised at each epoch's end), "
        "evaluation and checkpoints excluded; first_epoch_seconds includes any compilation. test_accuracy: the "
        "final model, read once at the end of the run. The tuning runs use seeds of their own.", ""])
    for target in [folder, *([Path(results)] if results else [])]:
        write_json(target / f"{NAME}.json", report)
        write_text(target / f"{NAME}.md", markdown)
    print(markdown)


def _compilation(report: dict[str, Any], meta: dict[str, Any]) -> str:
    warmups = report["warmup"]
    if warmups:
        runs = ", ".join(f"{w['recipe']}: {w['steps']} steps of {w['batch_size']} images, {w['seconds']:.1f} s"
                         for w in warmups)
        return (f"an untimed warm-up run per recipe ({runs}, with its evaluations) compiled the step before the "
                "timed runs, which reuse it, as airbench does")
    if meta.get("compiled"):
        return "in each timed run's first epoch (no warm-up)"
    return "none (eager)"


def _spread(name: str, e: dict[str, Any], values: Sequence[float]) -> str:
    sd = "" if e["std"] is None else f", sd {e['std']:.2f}"
    return f"- {name}: mean {e['mean']:.2f}{sd}, min {min(values):.2f}, max {max(values):.2f}"
