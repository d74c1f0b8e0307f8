"""`optimize(model, example_input)`: the fastest correct inference form of a model on a device, by measuring."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .. import measure
from ..errors import NondeepError
from ..parallel import is_stream_parallel_capable
from ..reparam import reparameterize_model
from .roof import Roof
from .forms import (CPU_FORMS, FORMS, GPU_FORMS, TOLERANCE, ModelVariants, Runner, build_runner, requested_pairs,
                    check_form, precision_flags, relative_error, resolve_precision)


class OptimizedModel(nn.Module):
    """The fused model, run in the form `optimize` chose. `forward(x)` takes float32 inputs of any batch size
    (a CUDA graph is captured again, a compiled form compiled again, for a new shape) and returns float32.

    Attributes: `form`, `precision`, `threads` (the choice), `latency_ms` (its median at the example's shape),
    `timings` (one dict per form tried: form, precision, threads, section, median/p10/p90 ms, rel_err,
    tolerance, status "chosen" / "timed" / "rejected: ..." / "failed: ..."), `roof_fraction` of the choice."""

    def __init__(self, fused: nn.Module, runner: Runner, timings: list[dict[str, Any]], summary: dict[str, Any]):
        super().__init__()
        self.model = fused
        self.runner = runner
        self.timings = timings
        self.summary = summary
        self.form, self.precision, self.threads = runner.form, runner.precision, runner.threads
        self.latency_ms: float = summary["latency_ms"]
        self.roof_fraction: float = summary["roof_fraction"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)

    def extra_repr(self) -> str:
        return f"form={self.runner.label()}, latency_ms={self.latency_ms:.3g}"

    def close(self) -> None:
        self.runner.close()


def _default_precisions(device: torch.device, dtype: str | torch.dtype | Sequence | None) -> list[str]:
    if dtype is None:
        return ["float32"] if device.type == "cpu" else ["float32", "float16"]
    if isinstance(dtype, (list, tuple)):
        return list(dict.fromkeys(resolve_precision(d) for d in dtype))
    return [resolve_precision(dtype)]


def available_forms(device: torch.device, model: nn.Module, compiled: bool = True) -> list[str]:
    """The forms `model` can run on `device` here (ONNX Runtime only where installed; streams only for a ParNet;
    the compiled ones unless `compiled` is False)."""
    forms = [f for f in (CPU_FORMS if device.type == "cpu" else GPU_FORMS) if compiled or not f.startswith("compiled")]
    if device.type == "cpu":
        try:
            import onnxruntime  # noqa: F401 - the form needs it; leave it out quietly when absent
        except ImportError:
            forms.remove("onnxruntime")
    if not is_stream_parallel_capable(model):
        forms = [f for f in forms if not FORMS[f].streams]
    return forms


def optimize(model: nn.Module, example_input: torch.Tensor, device: str | torch.device | None = None,
             dtype: str | torch.dtype | Sequence[str] | None = None, forms: Sequence[str] | None = None,
             threads: int | None = None, thread_counts: Sequence[int] | None = None, repeats: int = 20,
             warmup: int = 3, fuse: bool = True, label: str | None = None,
             roof: Roof | None = None) -> OptimizedModel:
    """The fastest form of `model` on `device` whose outputs match the fused eager float32 model's.

    model: trained or not; fused with nondeep.reparameterize_model (a copy) unless `fuse` is False.
    example_input: the shape to optimise for (batch size included); float32.
    device: default the example's. dtype: the precisions to try (None: float32 on a CPU; float32 and float16 on
        a GPU; or "float32" / "tf32" / "float16" / "bfloat16" / a torch dtype / a list of them; a CPU runs
        bfloat16 where it has native bf16, in the torch forms: ONNX Runtime is tried in float32 alone).
    forms: which forms to try (nondeep.inference.FORMS; default every form the device and model can run).
        Asking for a GPU form on a CPU, or a streams form of a model without streams, is a NondeepError.
    threads: CPU intra-op threads (default torch's current count); `thread_counts`: the counts to try for the
        single-stream torch and ONNX Runtime forms (default {threads, 1}: on small inputs one thread wins);
        compiled forms are compiled for `threads` only, and the streams form splits `threads` across streams.
    repeats/warmup: timed calls per candidate (in the sections of nondeep.bench.time_candidates).
    roof: the device's roof when the caller measured it already (one roof for many models); default measured
        now, before and after the timing (nondeep.inference.roof.measure_roof).

    Every candidate's output on the example is compared with the reference; one whose relative error passes
    nondeep.inference.TOLERANCE for its precision is not chosen. Returns an OptimizedModel recording the choice
    and every timing."""
    from ..bench import resolve_device, runner_candidate, time_candidates  # nondeep.bench imports this package

    device = resolve_device(device if device is not None else example_input.device)
    precisions = _default_precisions(device, dtype)
    fused = reparameterize_model(model) if fuse else model.eval()
    fused = fused.float().to(device)
    forms = list(forms) if forms is not None else available_forms(device, fused)
    for form, precision in requested_pairs(forms, precisions):
        check_form(form, device, fused, precision)  # bad input fails before any work
    threads = threads or torch.get_num_threads()
    counts = list(dict.fromkeys(thread_counts or (threads, 1))) if device.type == "cpu" else [threads]
    example = example_input.detach().float()
    x = example.to(device)
    with torch.inference_mode(), precision_flags("float32", device):
        reference = fused(x)

    variants = ModelVariants(fused, device)
    runners: list[Runner] = []
    errors: list[float] = []
    timings: list[dict[str, Any]] = []
    for form, precision in requested_pairs(forms, precisions):
        form_counts = [threads] if (FORMS[form].streams or form.startswith("compiled")) else counts
        for count in form_counts:
            entry = {"form": form, "precision": precision, "threads": count, "tolerance": TOLERANCE[precision]}
            try:
                runner = build_runner(fused, form, device, precision, count, example, variants)
                err = relative_error(runner(example), reference)
            except NondeepError:
                raise
            except Exception as exc:  # a compiler or a capture that fails here: try the others
                timings.append({**entry, "status": f"failed: {type(exc).__name__}: {exc}"})
                continue
            entry.update(rel_err=err, build_s=runner.build_s, section=runner.section)
            if not err <= TOLERANCE[precision]:
                status = f"rejected: relative error {err:.3g} > {TOLERANCE[precision]:g}"
                timings.append({**entry, "status": status})
                runner.close()
                continue
            runners.append(runner)
            errors.append(err)
            timings.append(entry)
    if not runners:
        raise NondeepError(f"no inference form of {label or type(model).__name__} ran correctly on {device}: "
                           + "; ".join(f"{t['form']}: {t['status']}" for t in timings))
    size = tuple(example.shape[1:])
    flops, params = measure.count_flops(fused, size), measure.count_params(fused)
    name = label or type(model).__name__
    to_time = [runner_candidate(r, name, size, flops, params) for r in runners]
    inputs = [r.prepare(x) for r in runners]
    rows = time_candidates(to_time, example.shape[0], repeats, warmup, threads, device, roof=roof, inputs=inputs)
    timed = [t for t in timings if "status" not in t]
    for entry, row in zip(timed, rows):
        entry.update(status="timed", median_ms=row["infer_step_time"], p10_ms=row["infer_step_time_p10"],
                     p90_ms=row["infer_step_time_p90"], roof_fraction=row["roof_fraction"])
    best = min(range(len(rows)), key=lambda i: rows[i]["infer_step_time"])
    timed[best]["status"] = "chosen"
    for i, r in enumerate(runners):
        if i != best:
            r.close()
    chosen = rows[best]
    summary = {"model": name, "device": str(device), "form": runners[best].form, "precision": runners[best].precision,
               "threads": runners[best].threads, "latency_ms": chosen["infer_step_time"],
               "roof_fraction": chosen["roof_fraction"], "roof_gflops": chosen["roof_gflops"],
               "rel_err": errors[best], "batch_size": int(example.shape[0]), "input_size": list(size),
               "machine": chosen["machine"], "torch_version": torch.__version__, "date": chosen["date"]}
    return OptimizedModel(fused, runners[best], timings, summary)


__all__ = ["optimize", "OptimizedModel", "available_forms"]
