"""Low-latency inference: the fastest correct form of a model on a device, found by measuring.

    from nondeep.inference import optimize
    fast = optimize(model, torch.randn(1, 3, 224, 224), device="cuda")   # or "cpu"
    fast(x)                                   # float32 in, float32 out, the same function as the fused model
    fast.form, fast.precision, fast.latency_ms, fast.timings

The forms (FORMS; see forms.py), all built on the fused (reparameterised) model:
- CPU: eager, channels_last, compiled (torch.compile), onnxruntime (nondeep.export's graph in ONNX Runtime),
  streams (nondeep.parallel.StreamParallel, the intra-op threads split across the streams); the torch and ONNX
  Runtime forms are tried on the given thread count and on one thread.
- GPU: the same eager forms in float32 (TF32 off), tf32, float16 or bfloat16, plus graph (replayed from a CUDA
  graph with static input and output buffers, captured again for a new shape), streams_graph (StreamParallel's
  CUDA streams captured inside the graph) and compiled_graph.
Each form's output on the example is compared with the fused float32 eager model's; a form is chosen only
within TOLERANCE (float32 forms: relative error 1e-5; float16 1e-2, bfloat16 5e-2, tf32 5e-3). The roof
(roof.py) is the highest rate measured on the device in the same run.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .forms import (CPU_FORMS, FORMS, GPU_FORMS, PRECISIONS, TOLERANCE, CudaGraph, FormSpec, Runner, build_runner,
                    check_form, relative_error, requested_pairs, resolve_precision)
from .optimize import OptimizedModel, available_forms, optimize
from .roof import Roof, device_info, machine_line, measure_roof


def fastest_candidate(model: nn.Module, label: str, input_size: Sequence[int], device: str | torch.device = "cpu",
                      threads: int | None = None, **optimize_kwargs: Any):
    """A nondeep.bench.Candidate that runs `model`'s fastest form (optimize at batch 1), its `form` named by
    the choice: for latency columns that compare models each at its best. `extra["fastest_of"]` holds the
    forms tried."""
    from ..bench import runner_candidate
    from .. import measure

    fast = optimize(model, torch.randn(1, *input_size), device=device, threads=threads, label=label,
                    **optimize_kwargs)
    size = tuple(int(s) for s in input_size)
    candidate = runner_candidate(fast.runner, label, size, measure.count_flops(fast.model, size),
                                 measure.count_params(fast.model))
    candidate.extra["fastest_of"] = [{k: t.get(k) for k in ("form", "precision", "threads", "median_ms", "status")}
                                     for t in fast.timings]
    return candidate


__all__ = ["optimize", "OptimizedModel", "available_forms", "fastest_candidate", "build_runner", "requested_pairs",
           "check_form", "resolve_precision",
           "relative_error", "Runner", "CudaGraph", "FormSpec", "FORMS", "CPU_FORMS", "GPU_FORMS", "PRECISIONS",
           "TOLERANCE", "Roof", "measure_roof", "device_info", "machine_line"]
