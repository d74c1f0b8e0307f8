"""What the training labs share: a budget (data, epochs, images, seeds, threads), the runs of a lab (each model
once per seed, each in its own folder, finished runs reused when a lab is started again), the forms the
latency column may choose from, and the search that matches models on parameters or FLOPs. The latency column
is _lab_latency.py; the report (aggregation over seeds, intervals, verdicts, files) is _lab_report.py."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .. import measure
from ..distill import distill
from ..errors import NondeepError
from ..hardware import native_cpu_bf16
from ..models import create_model
from ..reparam import reparameterize_model
from ..report import format_table, write_json
from ..train import TrainConfig, config_from_dict, train
from .executor import CPU_WORKERS, EXECUTORS, Failure, StopLab, execute, plan_for

MATCH_TOLERANCE = 0.20  # widths come in steps of 8 channels; a model further than this from its target is refused
QUICK = {"epochs": 1, "max_train_samples": 1000}  # the smoke budget (--quick)
GPU_BUDGET = {"epochs": 30, "max_train_samples": None}  # where a GPU makes converged runs cheap
LR_WIDEN = 2  # learning rates tried past a grid's edge, one at a time, while the best rate stays at that edge


class LabError(NondeepError):
    """Lab options that cannot be run (no seeds, a budget that cannot be matched, a folder of another lab)."""


class RunStopped(LabError, StopLab):
    """A run stopped by SIGINT/SIGTERM (checkpointed): the lab stops too."""


@dataclass
class Budget:
    """How much each run of a lab trains, on what, and how many seeds. The CPU defaults keep a lab with its
    seeds to about two hours on 2 cores; on a GPU the default is GPU_BUDGET; --quick is a smoke test."""
    epochs: int = 2
    max_train_samples: int | None = 20000
    seeds: int = 3
    seed: int = 0                       # the first seed; the runs use seed, seed + 1, ...
    val_split: float = 0.1
    data: str = "fashion-mnist"
    data_dir: str | None = None
    threads: int | None = None
    device: str = "auto"
    progress: bool = True
    executor: str = "local"             # where the runs train (executor.py); the results do not depend on it
    workers: int | None = None          # local: runs at once (default: one per GPU, or the cores at --threads each)
    ray_address: str | None = None
    latency_forms: tuple[str, ...] | None = None  # the inference forms the latency column chooses from (None: all)
    cpu_bf16: bool = False              # train in bf16 autocast on a CPU with native bf16 (TrainConfig.cpu_bf16)
    compile: bool = False               # torch.compile each run's step: speed only, so not a recipe key

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise LabError(f"--seeds must be at least 1 (3 or more to get intervals worth reading), got {self.seeds}")
        if self.epochs < 1:
            raise LabError(f"--epochs must be at least 1, got {self.epochs}")
        from ..inference import CPU_FORMS, GPU_FORMS  # checked here: a bad form would otherwise fail after training

        usable = GPU_FORMS if on_gpu(self.device) else CPU_FORMS
        for form in self.latency_forms or ():
            if form not in usable:
                raise LabError(f"--latency-forms: {form!r} is not a form this device runs; choose from "
                               f"{', '.join(usable)}")
        if self.cpu_bf16 and (on_gpu(self.device) or not native_cpu_bf16()):
            raise LabError("--cpu-bf16 needs CPU runs on a CPU with native bf16 (AVX512-BF16 or AMX; on a GPU the "
                           "runs train in bf16 already): drop --cpu-bf16")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    def flags(self) -> list[str]:
        """The command-line flags that reproduce this budget."""
        parts = ["--epochs", str(self.epochs), "--max-train-samples", str(self.max_train_samples or 0),
                 "--seeds", str(self.seeds), "--seed", str(self.seed), "--val-split", str(self.val_split)]
        parts += ["--threads", str(self.threads)] if self.threads else []
        parts += ["--device", self.device] if self.device != "auto" else []
        parts += ["--data-dir", self.data_dir] if self.data_dir else []
        parts += ["--latency-forms", *self.latency_forms] if self.latency_forms else []
        parts += ["--cpu-bf16"] if self.cpu_bf16 else []
        parts += ["--compile"] if self.compile else []
        return parts

    def describe(self) -> str:
        return (f"{self.epochs} epoch(s) on {self.max_train_samples or 'all'} training images per run"
                f"{speed_text(self.cpu_bf16, self.compile)}, "
                f"{self.val_split:.0%} of the training set held out for validation, seeds {self.seed_list}")


def speed_text(cpu_bf16: bool, compile: bool) -> str:
    """The speed options of a budget as the reports word them (empty when none is on)."""
    return f"{' in bf16 autocast (CPU)' if cpu_bf16 else ''}{', the step compiled' if compile else ''}"


def add_common_args(p: argparse.ArgumentParser, name: str, epochs: int = 2, max_train_samples: int = 20000,
                    match: Sequence[str] = (), latency: bool = True) -> None:
    p.add_argument("--epochs", type=int, help=f"epochs per run (default: {epochs} on a CPU, "
                   f"{GPU_BUDGET['epochs']} on a GPU)")
    p.add_argument("--max-train-samples", type=int, help=f"train on the first N images, 0 = all (default: "
                   f"{max_train_samples} on a CPU, all on a GPU)")
    p.add_argument("--seeds", type=int, default=3, help="runs per model, seeds --seed, --seed + 1, ... (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="the first seed (default: 0)")
    p.add_argument("--val-split", type=float, default=0.1,
                   help="fraction of the training set held out to choose checkpoints (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke budget: {QUICK['epochs']} epoch on {QUICK['max_train_samples']} images")
    if match:
        p.add_argument("--match", choices=list(match), default=match[0],
                       help="what the compared models are matched on (default: %(default)s); the report gives "
                            "both parameters and FLOPs")
    p.add_argument("--threads", type=int, help="torch CPU threads of each run (default: torch's choice; with "
                   "--workers N, the cores / N)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    p.add_argument("--cpu-bf16", action="store_true", help="on a CPU with native bf16 (AVX512-BF16 or AMX), train "
                   "in bf16 autocast: faster, at the accuracy cost docs/results/cpu_bf16.md measures")
    p.add_argument("--compile", action="store_true", help="torch.compile each run's training step (faster on 2 "
                   "CPU cores, docs/results/train_throughput.md; the compilation is in the first epoch)")
    p.add_argument("--data-dir", help="Fashion-MNIST folder (default: the usual places)")
    p.add_argument("--out", help=f"output folder (default runs/lab-{name}-<date>); a lab started again with the "
                   "same --out reuses the runs it finished")
    p.add_argument("--results", help=f"also copy {name}.json/.md/.png here (e.g. docs/results)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    if latency:  # a lab with a latency column
        add_latency_forms_arg(p)
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: concurrent runs on this machine; ray: each run a Ray task (pip install "
                        "'nondeep[ray]'); see docs/executors.md (default: %(default)s)")
    p.add_argument("--workers", type=int, help=f"local: runs at once, each in its own process (default: one per GPU, "
                   f"{CPU_WORKERS} on CPUs; each CPU run gets --threads or its share of the cores); 1: one after "
                   "another in this process")
    p.add_argument("--ray-address", help="the Ray cluster to submit to, e.g. 10.0.0.5:6379 (default: a Ray "
                   "instance started for the lab on 127.0.0.1); --out must be storage its nodes share")
    p.set_defaults(lab_defaults={"epochs": epochs, "max_train_samples": max_train_samples})


def add_latency_forms_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency-forms", nargs="+", metavar="FORM",
                   help="the inference forms among which each model's latency takes its fastest (default: every "
                        "form the device runs; `nondeep bench --help` lists them)")


def beyond_edge(rates: Sequence[float], best: float) -> float | None:
    """The next rate past the edge of the grid `rates` at which `best` sits (the grid's outer ratio continued, to
    3 significant digits); None when `best` is inside the grid or the grid has a single rate."""
    grid = sorted(set(rates))
    if len(grid) < 2 or best not in (grid[0], grid[-1]):
        return None
    edge, inner = (grid[0], grid[1]) if best == grid[0] else (grid[-1], grid[-2])
    return float(f"{edge * edge / inner:.3g}")


def on_gpu(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def budget_from_args(args: argparse.Namespace) -> Budget:
    """Flags over the lab's defaults: QUICK with --quick, GPU_BUDGET on a GPU, the lab's CPU budget otherwise."""
    default = QUICK if args.quick else GPU_BUDGET if on_gpu(args.device) else args.lab_defaults
    epochs = args.epochs if args.epochs is not None else default["epochs"]
    images = args.max_train_samples if args.max_train_samples is not None else default["max_train_samples"]
    return Budget(epochs=epochs, max_train_samples=images or None, seeds=args.seeds, seed=args.seed,
                  val_split=args.val_split, data_dir=args.data_dir, threads=args.threads, device=args.device,
                  progress=args.progress, executor=args.executor, workers=args.workers, ray_address=args.ray_address,
                  latency_forms=tuple(getattr(args, "latency_forms", None) or ()) or None, cpu_bf16=args.cpu_bf16,
                  compile=args.compile)


def lab_folder(out: str | Path | None, name: str) -> Path:
    return Path(out or Path("runs") / f"lab-{name}-{dt.datetime.now():%Y%m%d-%H%M%S}")


def machine() -> dict[str, Any]:
    from ..inference.roof import device_info

    cpu = device_info("cpu")  # lscpu's model name and the SIMD extensions that set training speed (AVX-512, AMX)
    return {"cpu": cpu["cpu_model"], "cpu_simd": cpu["cpu_simd"], "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def describe_machine(m: dict[str, Any]) -> str:
    """One line for a report: CPU, cores, torch threads, GPU, torch version, load (from machine())."""
    load = f"; load average {m['load_average'][0]}" if m.get("load_average") else ""
    return (f"{m['cpu']}, {m['cores']} cores ({m['threads']} torch threads), GPU: {m['gpu'] or 'none'}; "
            f"torch {m['torch']}{load}")


def finished(summary: dict[str, Any]) -> dict[str, Any]:
    """A run stopped by SIGINT/SIGTERM checkpointed and returned: stop the experiment too, rather than go on."""
    if summary.get("stopped_by"):
        raise NondeepError(f"{summary['model']} was stopped by {summary['stopped_by']} (its checkpoint is in "
                           f"{summary['out']}); rerun with another --out")
    return summary


@dataclass
class Run:
    """One model of a lab: `label` names it in the table, `columns` adds the lab's own columns to its row;
    it is trained once per seed of the budget, with seed + seed_offset (ensemble members differ by it), and
    with `recipe`, training options of this run alone (e.g. the image_size of the scaling lab's resolutions).
    `distill`: the run is a student, trained by `nondeep.distill.distill` with these arguments (teachers, loss,
    alpha, transfer_copies, ...); alpha 0 is its label-trained twin on the same images."""
    label: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    seed_offset: int = 0
    recipe: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] | None = None


def run_dir(folder: Path, label: str, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")
    return folder / slug / f"seed{seed}"


def train_run(folder: Path, run: Run, budget: Budget, seed: int, **recipe: Any) -> dict[str, Any]:
    """Train one (run, seed) with nondeep's default recipe (plus `recipe` overrides) and return its summary.
    A finished run with the same recipe is reused; a stopped one is resumed; one with another recipe is refused."""
    out = run_dir(folder, run.label, seed)
    cfg = config_from_dict({
        "model": run.model, "model_kwargs": run.model_kwargs, "out": str(out), "data": budget.data,
        "data_dir": budget.data_dir, "epochs": budget.epochs, "max_train_samples": budget.max_train_samples,
        "val_split": budget.val_split, "seed": seed + run.seed_offset, "threads": budget.threads,
        "device": budget.device, "progress": budget.progress, "cpu_bf16": budget.cpu_bf16, "compile": budget.compile,
        **recipe, **run.recipe})
    summary_path = out / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        # a field the run's config lacks was added since: the run trained with its default
        same = {**_RECIPE_DEFAULTS, **{k: v for k, v in summary.get("config", {}).items() if k in _RECIPE_KEYS}}
        if (same != {k: v for k, v in cfg.to_dict().items() if k in _RECIPE_KEYS}
                or _teaching(summary.get("distill")) != _teaching(run.distill)):
            raise LabError(f"{out} holds a finished run with another recipe: start the lab with another --out")
        if not summary.get("stopped_by"):
            print(f"reusing the finished run in {out}")
            return summary
    resume = (out / "last.safetensors").exists()
    if run.distill is not None:
        summary = distill(cfg, resume=resume, **run.distill)
    else:
        summary = train(cfg, resume=resume)
    if summary.get("stopped_by"):
        raise RunStopped(f"{run.label} (seed {seed}) was stopped by {summary['stopped_by']}; start the lab again "
                           f"with the same --out to go on from its checkpoint in {out}")
    return summary


def _teaching(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """What makes two student runs the same, from Run.distill (asked) or a summary's "distill" (done)."""
    if options is None:
        return None
    teachers = [t["path"] if isinstance(t, dict) else str(t) for t in options["teachers"]]
    online = options.get("mode") == "online" if "mode" in options else options.get("teacher_online", False)
    return {"teachers": teachers, "loss": options.get("loss", "mimic"), "alpha": options.get("alpha", 1.0),
            "temperature": options.get("temperature", 4.0), "online": online,
            "transfer_copies": 0 if online else options.get("transfer_copies", 0)}


# what makes two runs the same experiment (not where they write, how they show progress or how many threads)
_RECIPE_KEYS = {"model", "model_kwargs", "data", "epochs", "max_train_samples", "val_split", "seed", "batch_size",
                "lr", "optimizer", "schedule", "label_smoothing", "crop_padding", "flip", "cutout", "ema_decay",
                "image_size", "tta_flip", "cpu_bf16"}
_RECIPE_DEFAULTS = {k: v for k, v in TrainConfig().to_dict().items() if k in _RECIPE_KEYS}


class RunsFailed(LabError):
    """Runs of a lab that raised; the finished ones are kept, and the lab started again runs just these."""


def run_all(folder: Path, runs: Sequence[Run], budget: Budget, **recipe: Any) -> list[dict[str, Any]]:
    """Every run for every seed, on the budget's executor: one row per (run, seed), in that order, with the
    run's label, seed, accuracies, cost and validation curve (val_curve: eval_top1 per epoch). Raises
    RunsFailed (after the other runs finished) when any run failed."""
    jobs = [(f"{run.label} seed {seed + run.seed_offset}", (folder, run, seed, recipe))
            for run in runs for seed in budget.seed_list]
    results = execute(run_row, jobs, budget, folder)
    failures = [r for r in results if isinstance(r, Failure)]
    if failures:
        _refuse_failed(folder, failures, len(jobs))
    (folder / "failed.json").unlink(missing_ok=True)  # from an earlier start of the lab
    return results


def run_row(budget: Budget, folder: Path, run: Run, seed: int, recipe: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) one (run, seed) and return its row; what a worker of the executor runs."""
    summary = train_run(folder, run, budget, seed, **recipe)
    history = _history(Path(summary["out"]))
    return {"model": run.label, **run.columns, "seed": seed + run.seed_offset,
            "test_accuracy": summary["test_accuracy"], "best_test_accuracy": summary["best_test_accuracy"],
            "fused_test_accuracy": summary["fused_test_accuracy"], "val_accuracy": summary["val_accuracy"],
            "best_epoch": summary["best_epoch"], "depth": summary["depth"], "params": summary["params"],
            "fused_params": summary["fused_params"], "mflops": round(summary["flops"] / 1e6, 2),
            "steps": summary["steps"], "train_images": summary["train_images"],
            "train_seconds": round(summary["train_seconds"], 1), "checkpoint": summary["checkpoint"],
            "device": summary.get("device"), "val_curve": [row["eval_top1"] for row in history],
            **({"teacher_agreement": summary.get("teacher_agreement"),
                "teacher_test_accuracy": summary.get("teacher_test_accuracy"),
                "teacher_val_accuracy": summary.get("teacher_eval_accuracy")} if run.distill is not None else {})}


def _refuse_failed(folder: Path, failures: Sequence[Failure], total: int) -> None:
    """The same bad input in every run is refused as it is; otherwise the failed runs are printed as a table,
    written to failed.json in the lab folder, and named in one line."""
    if len(failures) == total and all(f.user_error for f in failures) and len({f.error for f in failures}) == 1:
        raise LabError(failures[0].error)
    print(format_table([asdict(f) for f in failures], ["name", "attempts", "error"]))
    where = ""
    if folder.is_dir():
        write_json(folder / "failed.json", {"failed": [asdict(f) for f in failures], "runs": total})
        where = f" (listed in {folder / 'failed.json'})"
    first = failures[0]
    raise RunsFailed(f"{len(failures)} of {total} runs failed{where}, first {first.name}: {first.error}; the "
                     f"finished runs are kept: fix the cause and start the lab again with the same --out to run "
                     "just the missing ones")


def _history(out: Path) -> list[dict[str, float]]:
    import csv
    with open(out / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def cost_of(match: str, input_size: Sequence[int]) -> Callable[[nn.Module], int]:
    """The quantity a lab matches its models on: parameters (training form) or FLOPs (fused form, one image)."""
    if match == "params":
        return measure.count_params
    if match == "flops":
        return lambda model: measure.count_flops(reparameterize_model(model), input_size)
    raise LabError(f"--match must be params or flops, got {match!r}")


def match_budget(build: Callable[[float], Any], target: int, grid: Sequence[float],
                 cost: Callable[[Any], int] = measure.count_params) -> tuple[float, int]:
    """The value in the ascending `grid` whose model's cost is closest to `target`: (value, cost). The cost grows
    with the value in steps (channel widths are rounded): bisect to the step that crosses the target, then
    compare the few values around it. `build` makes what `cost` reads: a model, or a model's description."""
    if not grid:
        raise ValueError("match_budget needs a non-empty grid")
    costs: dict[int, int] = {}

    def at(i: int) -> int:
        if i not in costs:
            costs[i] = cost(build(grid[i]))
        return costs[i]

    lo, hi = 0, len(grid) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid) < target else (lo, mid)
    best = min(range(max(0, lo - 2), min(len(grid), hi + 3)), key=lambda i: (abs(at(i) - target), i))
    return grid[best], at(best)


def check_matched(label: str, value: int, target: int, match: str) -> None:
    """Refuse, before anything trains, a model the grid could not bring near the target."""
    if abs(value - target) > MATCH_TOLERANCE * target:
        raise LabError(f"cannot match {label} on {match}: the closest is {value:,} against {target:,} "
                       f"(more than {MATCH_TOLERANCE:.0%} away); use --match "
                       f"{'params' if match == 'flops' else 'flops'} or change the models")


def param_count(name: str, **kwargs: Any) -> int:
    with torch.device("meta"):
        return measure.count_params(create_model(name, **kwargs))


def model_cost(name: str, match: str, input_size: Sequence[int], **kwargs: Any) -> int:
    """`match` (params or flops) of a registered model, built on the meta device (no memory, any size)."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return cost_of(match, input_size)(model)


def lab_meta(name: str, budget: Budget, command: Sequence[str], started: float, **extra: Any) -> dict[str, Any]:
    return {"lab": name, "command": shlex.join(command), **asdict(budget), "seed_list": budget.seed_list,
            "budget_text": budget.describe(), "execution": plan_for(budget).describe(), **extra,
            "machine": machine(), "date": dt.datetime.now().isoformat(timespec="seconds"),
            "total_seconds": time.perf_counter() - started}
