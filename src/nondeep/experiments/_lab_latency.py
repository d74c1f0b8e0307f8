"""The labs' latency column: each model at batch 1 in its fastest correct form on the lab's device (issue 21),
the chosen forms then timed side by side in interleaved rounds, so that models are compared each at its best
and at the same moment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..bench import time_candidates
from ..checkpoint import load_model
from ..inference import available_forms, fastest_candidate, measure_roof
from ..train.loop import resolve_device
from ._lab import Budget, LabError

LATENCY_REPEATS = 50
LATENCY_NOTE = ("latency_ms is each model's batch-1 median in its fastest correct form on the lab's device "
                "(latency_form: chosen by nondeep.inference.optimize among --latency-forms), one checkpoint per "
                "model, all timed side by side in interleaved rounds")


def checkpoint_model(path: str | Path) -> tuple[nn.Module, tuple[int, ...]]:
    """A checkpoint's model and the input it was trained on (channels, height, width)."""
    model, meta = load_model(path)
    return model, (meta["data"]["in_chans"], *meta["data"]["image_size"])


def fastest_latency(models: dict[str, tuple[nn.Module, Sequence[int]]], device: str | torch.device = "cpu",
                    threads: int | None = None, forms: Sequence[str] | None = None,
                    repeats: int = LATENCY_REPEATS) -> dict[str, dict[str, Any]]:
    """{label: {"latency_ms", "latency_form"}} for {label: (model, input size)}: nondeep.inference.optimize
    chooses each model's fastest form among `forms` (default every form the device runs; the model is fused
    first), against one roof measured for all; then the chosen forms are timed together (median of `repeats`
    batch-1 calls, each form in its own thread section)."""
    device = torch.device(device)
    threads = threads or torch.get_num_threads()
    tried = {label: _forms_for(model, label, device, forms) for label, (model, _) in models.items()}
    # One roof for the lab (optimize would measure one per model); the labs report latency, not roof fractions.
    roof = measure_roof(device, ("float16",) if device.type == "cuda" else (), threads=threads,
                        thread_counts=(threads,))
    candidates = [fastest_candidate(model, label, size, device, threads, forms=tried[label], roof=roof)
                  for label, (model, size) in models.items()]
    rows = time_candidates(candidates, 1, repeats, warmup=5, threads=threads, device=device, roof=roof)
    return {row["model"]: {"latency_ms": row["infer_step_time"], "latency_form": _form_text(row, device)}
            for row in rows}


def _forms_for(model: nn.Module, label: str, device: torch.device,
               forms: Sequence[str] | None) -> list[str] | None:
    """The asked forms this model can run (a WRN has no streams to run side by side); None: all it can."""
    if forms is None:
        return None
    runnable = [f for f in forms if f in available_forms(device, model)]
    if not runnable:
        raise LabError(f"{label} runs none of --latency-forms {' '.join(forms)} on {device}: start the lab again "
                       "with the same --out and other --latency-forms (its finished runs are reused)")
    return runnable


def _form_text(row: dict[str, Any], device: torch.device) -> str:
    """"onnxruntime, 1 thread", "streams_graph float16": the form, its precision unless float32, CPU threads."""
    text = row["form"] + ("" if row["precision"] == "float32" else f" {row['precision']}")
    return text + (f", {row['threads']} thread{'s' if row['threads'] > 1 else ''}" if device.type == "cpu" else "")


def latency_by_model(per_seed: Sequence[dict[str, Any]], budget: Budget) -> dict[str, dict[str, Any]]:
    """fastest_latency of each model of a lab on its device, from its first seed's checkpoint (the seeds share
    the architecture)."""
    first: dict[str, str] = {}
    for row in per_seed:
        first.setdefault(row["model"], row["checkpoint"])
    return fastest_latency({label: checkpoint_model(path) for label, path in first.items()},
                           resolve_device(budget.device), budget.threads, budget.latency_forms)
