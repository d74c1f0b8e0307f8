"""Inference benchmarks: latency, throughput and the fraction of the device's roof, for every inference form.

    from nondeep.bench import benchmark_model, prepare_model, time_models
    rows = benchmark_model("parnet_s", batch_sizes=(1, 32), threads=2, forms=["onnxruntime", "streams"])
    # models side by side: every form of every model in the same interleaved rounds
    models = [prepare_model(m, threads=2, forms=["onnxruntime"]) for m in ("parnet_s", "torchvision:resnet50")]
    rows = time_models(models, batch_sizes=(1,), threads=2)

Each row uses timm's benchmark.py field names where the meaning is the same (`model`, `param_count` in
millions, `infer_samples_per_sec`, `infer_step_time` in ms per batch, `infer_batch_size`, `infer_img_size`,
`infer_gmacs` per sample) plus nondeep's own: `form` (see FORMS), `precision`, `depth` (measured,
nondeep.measure.depth), `infer_step_time_p10` / `_p90` (the spread), `achieved_gflops` (FLOPs of the timed
forward / median time), `roof_gflops` (nondeep.inference.roof: the highest rate measured on the device in the
same run, a large matmul and a large conv, in the form's precision), `roof_components` (every measured rate),
`roof_fraction` (their ratio: above 1 is a bug, `check_row` raises), `threads`, `section`, `device`,
`machine`, `cpu_simd`, `torch_version`, `date`, `loadavg_before` / `_after`, and for the forms of
nondeep.inference `rel_err` (against the fused float32 eager model, same input) and `tolerance`.

Timing (sections by thread regime, interleaved rounds): nondeep.bench_candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import measure
from .bench_candidates import (DEFAULT_REPEATS, DEFAULT_WARMUP, Candidate, module_candidate, resolve_device,
                               runner_candidate, time_candidates)
from .bench_rows import ROW_FIELDS, TABLE_COLUMNS, check_row, refresh_roof, speedup
from .errors import NondeepError
from .inference.forms import (FORMS as INFERENCE_FORMS, TOLERANCE, ModelVariants, Runner, build_runner, check_form,
                              precision_flags, relative_error, requested_pairs, resolve_precision)
from .inference.roof import Roof, measure_roof
from .models import create_model
from .parallel import NotStreamParallelError, intra_op_threads
from .reparam import reparameterize_model

log = logging.getLogger(__name__)

FORMS = ("unfused", "fused", "eager", *(f for f in INFERENCE_FORMS if f != "eager"))
"""unfused: the training-form model in eval mode; fused: after reparameterize_model; eager: a model with nothing
to fuse (e.g. a ResNet); the rest are the forms of nondeep.inference (FORMS there) built on the fused model."""

def _has_fusable_blocks(model: nn.Module) -> bool:
    return any(hasattr(m, "reparameterize") for m in model.modules())


def _model_label(model: nn.Module, fallback: str | None = None) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return fallback or cfg.get("architecture") or getattr(model, "name", None) or type(model).__name__


def build_model(name_or_model: str | nn.Module, input_size: Sequence[int] | None = None,
                in_chans: int | None = None, num_classes: int | None = None) -> tuple[nn.Module, str, tuple[int, ...]]:
    """The model (a registry name through nondeep.create_model, or a module as it is), its label, and the
    (C, H, W) input size to time it at (the given one, else the model's config, else 3x224x224)."""
    if isinstance(name_or_model, nn.Module):
        model, label = name_or_model, _model_label(name_or_model)
    else:
        if in_chans is None and input_size is not None:
            in_chans = int(input_size[0])
        model = create_model(str(name_or_model), in_chans=in_chans, num_classes=num_classes)
        label = str(name_or_model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(int(s) for s in (input_size or cfg.get("input_size") or (in_chans or 3, 224, 224)))
    if len(size) != 3:
        raise NondeepError(f"{label}: the input size must be C H W, got {size}")
    return model, label, size


def _strict_float32(fn: Callable[[torch.Tensor], Any], device: torch.device) -> Callable[[torch.Tensor], Any]:
    def run(x: torch.Tensor) -> Any:
        with precision_flags("float32", device):
            return fn(x)
    return run


def check_timing(batch_sizes: Sequence[int], repeats: int, warmup: int) -> None:
    """Bad timing arguments fail before any model is built."""
    if repeats < 1 or warmup < 0:
        raise NondeepError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise NondeepError(f"batch sizes must be positive integers, got {list(batch_sizes)}")


@dataclass
class PreparedModel:
    """One model made ready to time (prepare_model): its candidates, the fused and unfused modules first, then the
    forms of nondeep.inference (`runners`), and the fused float32 eager model that checks their outputs."""
    label: str
    input_size: tuple[int, ...]
    eager: nn.Module
    memory_format: torch.memory_format
    modules: int  # how many of the candidates are plain modules (fused, unfused), before the runners
    runners: list[Runner]
    candidates: list[Candidate]

    def inputs(self, batch: int, device: torch.device) -> tuple[list[torch.Tensor], list[float]]:
        """One prepared input per candidate at `batch`, and each runner's relative error on it against the fused
        float32 eager model."""
        x = torch.randn(int(batch), *self.input_size, device=device)
        with torch.inference_mode(), precision_flags("float32", device):
            reference = self.eager(x.contiguous(memory_format=self.memory_format))
        inputs = [x.contiguous(memory_format=self.memory_format) for _ in range(self.modules)]
        errors = []
        for r in self.runners:
            inputs.append(r.prepare(x))
            errors.append(relative_error(r(x), reference))
        return inputs, errors

    def close(self) -> None:
        for r in self.runners:
            r.close()


def prepare_model(name_or_model: str | nn.Module, input_size: Sequence[int] | None = None,
                  threads: int | None = None, device: str | torch.device = "cpu", fused_and_unfused: bool = True,
                  channels_last: bool = False, *, forms: Sequence[str] = (), precisions: Sequence[str] = ("float32",),
                  in_chans: int | None = None, num_classes: int | None = None, model_name: str | None = None,
                  thread_counts: Sequence[int] | None = None,
                  failures: list[dict[str, Any]] | None = None) -> PreparedModel:
    """Build a model's candidates for time_models (the arguments are benchmark_model's)."""
    device = resolve_device(device)
    model, label, size = build_model(name_or_model, input_size, in_chans, num_classes)
    label = model_name or label
    threads = threads or torch.get_num_threads()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    precisions = list(dict.fromkeys(resolve_precision(p) for p in precisions))
    model = model.eval()
    runners: list[Runner] = []
    with intra_op_threads(threads):
        try:
            depth: int | None = measure.depth(model, size)
        except Exception as err:  # a model neither fx nor torch.export can trace: report the rest
            log.warning("%s: depth not measured (%s)", label, err)
            depth = None
        fusable = _has_fusable_blocks(model)
        eager = reparameterize_model(model) if fusable else model
        wanted = []
        for item in dict.fromkeys(forms):
            form, _, only = item.partition(":")
            for _, precision in ([(form, resolve_precision(only))] if only else requested_pairs([form], precisions)):
                one_count = device.type != "cpu" or form == "compiled" or (
                    form in INFERENCE_FORMS and INFERENCE_FORMS[form].streams)
                for count in [threads] if one_count else (thread_counts or [threads]):
                    if form == "eager" and precision == "float32" and count == threads:
                        continue  # that is the fused (or eager) row itself
                    try:
                        check_form(form, device, eager, precision)
                    except NotStreamParallelError:
                        log.warning("%s has no parallel streams: no %s row", label, form)
                        continue
                    wanted.append((form, precision, count))
        base = [("fused" if fusable else "eager", eager)] + ([("unfused", model)] if fusable and fused_and_unfused
                                                              else [])
        flops, params = measure.count_flops(eager, size), measure.count_params(eager)
        example = torch.randn(1, *size)
        variants = ModelVariants(eager, device)  # one copy per (dtype, memory format), shared by the forms
        for form, precision, count in wanted:
            try:
                runners.append(build_runner(eager, form, device, precision, count, example, variants))
            except NondeepError:
                for r in runners:
                    r.close()
                raise
            except Exception as err:  # a compiler or a capture that fails: report it, time the rest
                log.warning("%s: form %s (%s) failed to build: %s: %s", label, form, precision,
                            type(err).__name__, err)
                if failures is not None:
                    failures.append({"model": label, "form": form, "precision": precision,
                                     "error": f"{type(err).__name__}: {err}"})
        for _, m in base:
            m.to(device=device, memory_format=memory_format)
        candidates = [module_candidate(m, label, form, size, depth=depth, channels_last=channels_last)
                      for form, m in reversed(base)]
        if device.type == "cuda":  # strict float32 (cuDNN would use TF32 by default): what "float32" says
            for c in candidates:
                c.fn = _strict_float32(c.fn, device)
        candidates += [runner_candidate(r, label, size, flops, params, depth) for r in runners]
    return PreparedModel(label, size, eager, memory_format, len(base), runners, candidates)


def time_models(models: Sequence[PreparedModel], batch_sizes: Sequence[int] = (1, 32), threads: int | None = None,
                device: str | torch.device = "cpu", repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP,
                *, peak_gflops: float | None = None, roof: Roof | None = None, rounds: int | None = None,
                quiet_wait_s: float = 0.0) -> list[dict[str, Any]]:
    """Time every candidate of every model side by side: at each batch size all of them in the same sections and
    interleaved rounds (time_candidates), so that a slower spell of the machine hits every model alike. Rows
    model by model, then batch size, then candidate; each runner's row has its `rel_err` and `tolerance`.
    The roof is `roof`, else `peak_gflops`, else measured before and after the timing. Closes the models."""
    device = resolve_device(device)
    check_timing(batch_sizes, repeats, warmup)
    threads = threads or torch.get_num_threads()
    every = [c for m in models for c in m.candidates]
    precisions = tuple(dict.fromkeys(c.precision for c in every))
    onnxruntime = any(c.form == "onnxruntime" for c in every)
    measured_here = roof is None and not peak_gflops
    try:
        if measured_here:
            with intra_op_threads(threads):
                roof = measure_roof(device, precisions, threads, onnxruntime=onnxruntime)
        per_model: list[list[dict[str, Any]]] = [[] for _ in models]
        for batch in batch_sizes:
            inputs, errors = [], []
            for m in models:
                model_inputs, model_errors = m.inputs(int(batch), device)
                inputs += model_inputs
                errors.append(model_errors)
            batch_rows = time_candidates(every, int(batch), repeats, warmup, threads, device, peak_gflops, rounds,
                                         quiet_wait_s, roof=roof, inputs=inputs)
            for i, m in enumerate(models):
                rows, batch_rows = batch_rows[:len(m.candidates)], batch_rows[len(m.candidates):]
                for row, r, err in zip(rows[m.modules:], m.runners, errors[i]):
                    row.update(rel_err=err, tolerance=TOLERANCE[r.precision])
                    if not err <= TOLERANCE[r.precision]:
                        log.warning("%s: form %s (%s) differs from the fused eager model by %.3g (relative; "
                                    "tolerance %g) at batch %d", m.label, r.form, r.precision, err,
                                    TOLERANCE[r.precision], batch)
                per_model[i] += rows
        rows = [row for model_rows in per_model for row in model_rows]
        if measured_here:  # measured again after: the roof is the best rate seen in the run
            with intra_op_threads(threads):
                refresh_roof(rows, roof.merge(measure_roof(device, precisions, threads, onnxruntime=onnxruntime)))
    finally:
        for m in models:
            m.close()
    return rows


def benchmark_model(name_or_model: str | nn.Module, input_size: Sequence[int] | None = None,
                    batch_sizes: Sequence[int] = (1, 32), threads: int | None = None,
                    device: str | torch.device = "cpu", fused_and_unfused: bool = True,
                    channels_last: bool = False, compile: bool = False, stream_parallel: bool = False,
                    repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP, *, forms: Sequence[str] = (),
                    precisions: Sequence[str] = ("float32",), in_chans: int | None = None,
                    num_classes: int | None = None, peak_gflops: float | None = None, roof: Roof | None = None,
                    model_name: str | None = None, rounds: int | None = None, quiet_wait_s: float = 0.0,
                    thread_counts: Sequence[int] | None = None,
                    failures: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Time one model's inference forms at each batch size; one row (dict, see ROW_FIELDS) per (batch, form,
    precision). Several models side by side: prepare_model each, then time_models.

    name_or_model: a registry name (anything nondeep.create_model takes, e.g. "parnet_s",
        "torchvision:resnet18") or an nn.Module (`model_name` labels it).
    input_size: (C, H, W); default the model's config. in_chans/num_classes go to create_model.
    threads: intra-op threads for the timing (restored afterwards); default torch's current count.
    fused_and_unfused: time the training form (eval mode) next to the fused one; a model with nothing to fuse
        is timed once, as form "eager". These rows are float32, in the layout `channels_last` says.
    forms: forms of nondeep.inference (FORMS there: "channels_last", "compiled", "onnxruntime", "streams",
        "graph", "streams_graph", "compiled_graph", or "eager" in a reduced precision) built on the fused model,
        in each of `precisions`; `compile` adds "compiled" and `stream_parallel` adds "streams". A form the
        device cannot run is a NondeepError; a streams form on a model without streams is skipped (logged).
        Each form's output is compared with the fused float32 eager model's on the timed input (`rel_err`,
        `tolerance` in its rows); a form that fails to build is logged and appended to `failures`. An item
        "FORM:PRECISION" (e.g. "compiled_graph:float16") is built in that precision only.
    thread_counts: on a CPU, the intra-op thread counts of the torch and ONNX Runtime forms (default
        [threads]); each count is a timing section of its own. Compiled and streams forms use `threads`.
    repeats/warmup: timed/untimed calls per form and batch size (see time_candidates for the sections).
    roof / peak_gflops: the roof; default measured now (nondeep.inference.roof.measure_roof).
    quiet_wait_s: wait up to this long for other processes to leave the CPUs before timing.
    """
    check_timing(batch_sizes, repeats, warmup)
    forms = [*forms, *(["compiled"] if compile else []), *(["streams"] if stream_parallel else [])]
    prepared = prepare_model(name_or_model, input_size, threads, device, fused_and_unfused, channels_last,
                             forms=forms, precisions=precisions, in_chans=in_chans, num_classes=num_classes,
                             model_name=model_name, thread_counts=thread_counts, failures=failures)
    return time_models([prepared], batch_sizes, threads, device, repeats, warmup, peak_gflops=peak_gflops,
                       roof=roof, rounds=rounds, quiet_wait_s=quiet_wait_s)


__all__ = ["benchmark_model", "prepare_model", "time_models", "PreparedModel", "build_model", "resolve_device",
           "Candidate", "module_candidate", "runner_candidate", "refresh_roof", "time_candidates", "check_row",
           "check_timing", "speedup", "FORMS", "ROW_FIELDS", "TABLE_COLUMNS", "DEFAULT_REPEATS", "DEFAULT_WARMUP"]
