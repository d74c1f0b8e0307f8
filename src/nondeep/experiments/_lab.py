"""What the training labs share: a budget (data, epochs, images, seed, threads), one training run, the trained
models' batch-1 latency timed side by side, a parameter-matching search, and the written report
(<name>.json, <name>.md, <name>.png in the lab's folder, optionally copied to a results folder)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .. import measure
from ..bench import Candidate, module_candidate, time_candidates
from ..checkpoint import load_model
from ..errors import NondeepError
from ..models import create_model
from ..plots import plot_scatter
from ..report import format_table, write_json, write_text
from ..reparam import reparameterize_model
from ..train import config_from_dict, train


@dataclass
class Budget:
    """How much each run of a lab trains, and on what. The labs' defaults keep each lab to minutes on 2 CPU
    cores; the papers' budgets are flags away (e.g. --epochs 30 --max-train-samples 0)."""
    epochs: int = 2
    max_train_samples: int | None = 20000
    seed: int = 0
    data: str = "fashion-mnist"
    data_dir: str | None = None
    threads: int | None = None
    progress: bool = True

    def flags(self) -> list[str]:
        """The command-line flags that reproduce this budget."""
        parts = ["--epochs", str(self.epochs), "--max-train-samples", str(self.max_train_samples or 0),
                 "--seed", str(self.seed)]
        parts += ["--threads", str(self.threads)] if self.threads else []
        parts += ["--data-dir", self.data_dir] if self.data_dir else []
        return parts


def add_common_args(p: argparse.ArgumentParser, name: str, epochs: int = 2, max_train_samples: int = 20000) -> None:
    p.add_argument("--epochs", type=int, default=epochs, help="epochs per run (default: %(default)s)")
    p.add_argument("--max-train-samples", type=int, default=max_train_samples,
                   help="train on the first N images, 0 = all 60000 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-dir", help="Fashion-MNIST folder (default: the usual places)")
    p.add_argument("--out", help=f"output folder (default runs/lab-{name}-<date>)")
    p.add_argument("--results", help=f"also copy {name}.json/.md/.png here (e.g. docs/results)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def budget_from_args(args: argparse.Namespace) -> Budget:
    return Budget(epochs=args.epochs, max_train_samples=args.max_train_samples or None, seed=args.seed,
                  data_dir=args.data_dir, threads=args.threads, progress=args.progress)


def lab_folder(out: str | Path | None, name: str) -> Path:
    return Path(out or Path("runs") / f"lab-{name}-{dt.datetime.now():%Y%m%d-%H%M%S}")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version()}


def describe_machine(m: dict[str, Any]) -> str:
    """One line for a report: CPU, cores, torch threads, GPU, torch version (from machine())."""
    return (f"{m['cpu']}, {m['cores']} cores ({m['threads']} torch threads), GPU: {m['gpu'] or 'none'}; "
            f"torch {m['torch']}")


def finished(summary: dict[str, Any]) -> dict[str, Any]:
    """A run stopped by SIGINT/SIGTERM checkpointed and returned: stop the lab too, rather than go on."""
    if summary.get("stopped_by"):
        raise NondeepError(f"{summary['model']} was stopped by {summary['stopped_by']} (its checkpoint is in "
                           f"{summary['out']}); rerun the lab with another --out")
    return summary


def train_run(out: Path, run: str, model: str, budget: Budget, model_kwargs: dict[str, Any] | None = None,
              seed: int | None = None, **recipe: Any) -> dict[str, Any]:
    """Train `model` with nondeep's default recipe (plus `recipe` overrides) into out/run; its summary."""
    cfg = config_from_dict({
        "model": model, "model_kwargs": model_kwargs or {}, "out": str(out / run), "data": budget.data,
        "data_dir": budget.data_dir, "epochs": budget.epochs, "max_train_samples": budget.max_train_samples,
        "seed": budget.seed if seed is None else seed, "threads": budget.threads, "progress": budget.progress,
        **recipe})
    return finished(train(cfg))


@dataclass
class Run:
    """One model of a lab: `label` names it in the table, `columns` adds the lab's own columns to its row."""
    label: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


def train_and_time(folder: Path, runs: Sequence[Run], budget: Budget) -> list[dict[str, Any]]:
    """Train every run with the same recipe and budget, then time the fused models side by side at batch 1;
    one row per run (accuracy, measured depth, params, latency_ms, train_seconds, checkpoint)."""
    rows, candidates = [], []
    for run in runs:
        summary = train_run(folder, run.label, run.model, budget, model_kwargs=run.model_kwargs, seed=run.seed)
        rows.append({"model": run.label, **run.columns, "depth": summary["depth"], "params": summary["params"],
                     "fused_params": summary["fused_params"],
                     "mflops": round(summary["flops"] / 1e6, 1), "test_accuracy": summary["test_accuracy"],
                     "fused_test_accuracy": summary["fused_test_accuracy"],
                     "train_seconds": round(summary["train_seconds"], 1), "checkpoint": summary["checkpoint"]})
        candidates.append(checkpoint_candidate(summary["checkpoint"], run.label))
    latency = time_side_by_side(candidates, threads=budget.threads)
    for row in rows:
        row["latency_ms"] = latency[row["model"]]["infer_step_time"]
    return rows


def checkpoint_candidate(path: str | Path, label: str) -> Candidate:
    """The fused (inference-form) model of a checkpoint, as a batch-1 latency candidate. Its depth is left out:
    the run's summary.json already holds the measured depth."""
    model, meta = load_model(path)
    input_size = (meta["data"]["in_chans"], *meta["data"]["image_size"])
    return module_candidate(reparameterize_model(model).eval(), label, "fused", input_size)


def time_side_by_side(candidates: Sequence[Candidate], threads: int | None = None,
                      repeats: int = 50) -> dict[str, dict[str, Any]]:
    """Batch-1 latency of each candidate, timed in interleaved rounds; {candidate.model: bench row}."""
    rows = time_candidates(candidates, batch_size=1, repeats=repeats, warmup=5, threads=threads)
    return {row["model"]: row for row in rows}


def match_params(build: Callable[[float], nn.Module], target: int, grid: Sequence[float]) -> tuple[float, int]:
    """The value in the ascending `grid` whose model has the parameter count closest to `target`: (value, count).
    The count grows with the value in steps (channel widths are rounded): bisect to the step that crosses the
    target, then compare the few values around it."""
    if not grid:
        raise ValueError("match_params needs a non-empty grid")
    counts: dict[int, int] = {}

    def count(i: int) -> int:
        if i not in counts:
            counts[i] = measure.count_params(build(grid[i]))
        return counts[i]

    lo, hi = 0, len(grid) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    best = min(range(max(0, lo - 2), min(len(grid), hi + 3)), key=lambda i: (abs(count(i) - target), i))
    return grid[best], count(best)


def param_count(name: str, **kwargs: Any) -> int:
    with torch.device("meta"):
        return measure.count_params(create_model(name, **kwargs))


def lab_meta(name: str, budget: Budget, command: Sequence[str], started: float, **extra: Any) -> dict[str, Any]:
    return {"lab": name, "command": shlex.join(command), **asdict(budget), **extra, "machine": machine(),
            "date": dt.datetime.now().isoformat(timespec="seconds"), "total_seconds": time.perf_counter() - started}


def publish(report: dict[str, Any], folder: Path, results: str | None, title: str, columns: Sequence[str],
            notes: str, plot: dict[str, Any]) -> None:
    """Write <name>.json (the whole report), <name>.md (command, budget, machine, date, the table, `notes`) and
    <name>.png (plot_scatter of the rows with the `plot` arguments) into the lab's folder and `results`; print
    the table and where it went."""
    meta, name = report["meta"], report["meta"]["lab"]
    budget = (f"{meta['epochs']} epoch(s) on {meta['max_train_samples'] or 'all'} training images per run, "
              f"seed {meta['seed']}")
    markdown = (f"# {title}\n\n- command: `{meta['command']}`\n- budget: {budget}\n"
                f"- machine: {describe_machine(meta['machine'])}\n- date: {meta['date']}; the lab took {meta['total_seconds'] / 60:.1f} min\n\n"
                f"{format_table(report['rows'], list(columns))}\n\n{notes}\n")
    for target in [folder, *([Path(results)] if results else [])]:
        write_json(target / f"{name}.json", report)
        write_text(target / f"{name}.md", markdown)
        plot_scatter(report["rows"], path=target / f"{name}.png", **plot)
    print(format_table(report["rows"], list(columns)))
    print(f"\nwritten under {folder}: {name}.json, {name}.md, {name}.png, one run folder per model"
          + (f"; copied to {results}" if results else ""))
