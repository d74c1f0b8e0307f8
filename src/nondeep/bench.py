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

Timing: the candidates are grouped in sections, one per thread regime (torch on N intra-op threads; ONNX
Runtime on its own pool; stream-parallel threads, which switch the caller's thread count inside each call), so
that no thread count changes between the calls of one section. Within a section the candidates (of one model,
or of several with time_models) are timed in interleaved rounds (A, B, A, B, ...); the sections themselves take
turns round by round, each visit starting with untimed calls that let the previous section's thread pools go
quiet. `background_cpu` records how busy the CPUs were (other processes) just before timing, `loadavg_before` /
`_after` the 1-min load average at the start and end of the candidate's section.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import measure
from .errors import NondeepError
from .models import create_model
from .inference.forms import (FORMS as INFERENCE_FORMS, PRECISIONS, TOLERANCE, ModelVariants, Runner, build_runner,
                              requested_pairs,
                              check_form, precision_flags, relative_error, resolve_precision)
from .inference.roof import Roof, RoofComponent, device_info, machine_line, measure_roof
from .bench_rows import ROW_FIELDS, TABLE_COLUMNS, check_row, refresh_roof, speedup
from .parallel import DeviceUnavailableError, NotStreamParallelError, intra_op_threads
from .reparam import reparameterize_model
from .timing import summarize, time_sections, wait_for_quiet

log = logging.getLogger(__name__)

FORMS = ("unfused", "fused", "eager", *(f for f in INFERENCE_FORMS if f != "eager"))
"""unfused: the training-form model in eval mode; fused: after reparameterize_model; eager: a model with nothing
to fuse (e.g. a ResNet); the rest are the forms of nondeep.inference (FORMS there) built on the fused model."""

DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 5

def _has_fusable_blocks(model: nn.Module) -> bool:
    return any(hasattr(m, "reparameterize") for m in model.modules())


def _model_label(model: nn.Module, fallback: str | None = None) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return fallback or cfg.get("architecture") or getattr(model, "name", None) or type(model).__name__


def resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"--device {device} needs CUDA, and torch.cuda.is_available() is False on "
                                     f"this machine: use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise NondeepError(f"device {device} is not supported by the benchmark: use cpu or cuda")
    return device


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


@dataclass
class Candidate:
    """One thing to time: `fn(x)` on an input of `input_size`, with what its row reports. `flops` is per sample
    (FLOPs of the math it computes: a compiled or stream-parallel model computes the fused model's)."""
    model: str
    form: str
    fn: Callable[[torch.Tensor], Any]
    input_size: tuple[int, ...]
    flops: int
    params: int
    depth: int | None = None
    channels_last: bool = False
    compile_time_s: float | None = None
    stream_mode: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    precision: str = "float32"
    threads: int | None = None  # intra-op threads of its section (default: the call's)
    section: str | None = None  # its timing section (default: "torch N threads")


def module_candidate(module: nn.Module, model: str, form: str, input_size: Sequence[int], *,
                     depth: int | None = None, flops_of: nn.Module | None = None, **kwargs: Any) -> Candidate:
    """A Candidate that calls `module`; FLOPs and params are counted on `flops_of` (default the module)."""
    counted = flops_of if flops_of is not None else module
    return Candidate(model, form, module, tuple(int(s) for s in input_size),
                     measure.count_flops(counted, input_size), measure.count_params(counted), depth, **kwargs)


def time_candidates(candidates: Sequence[Candidate], batch_size: int = 1, repeats: int = DEFAULT_REPEATS,
                    warmup: int = DEFAULT_WARMUP, threads: int | None = None, device: str | torch.device = "cpu",
                    peak_gflops: float | None = None, rounds: int | None = None,
                    quiet_wait_s: float = 0.0, roof: Roof | None = None,
                    inputs: Sequence[torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """Time the candidates against each other (inference mode), in sections by thread regime and interleaved
    rounds within each (see the module's doc); one row (see ROW_FIELDS) per candidate. The roof is `roof`, else
    `peak_gflops` (one given rate), else measured now (nondeep.inference.roof.measure_roof). `inputs`: one
    prepared input per candidate (default: random, in its precision and memory format)."""
    device = resolve_device(device)
    threads = threads or torch.get_num_threads()
    info = device_info(device)
    measured_here = roof is None and not peak_gflops
    with intra_op_threads(threads):
        if roof is None:
            if peak_gflops:
                roof = Roof(str(device), threads, [RoofComponent("given", "float32", "given", "", float(peak_gflops))])
            else:
                roof = measure_roof(device, tuple({c.precision for c in candidates}), threads,
                                    onnxruntime=any(c.form == "onnxruntime" for c in candidates))
        if inputs is None:
            inputs = []
            for c in candidates:
                x = torch.randn(batch_size, *c.input_size, device=device, dtype=PRECISIONS[c.precision])
                inputs.append(x.contiguous(memory_format=torch.channels_last) if c.channels_last else x)
    sections: dict[str, tuple[int | None, dict[Any, Callable[[], Any]]]] = {}
    names = []
    for i, (c, x) in enumerate(zip(candidates, inputs)):
        cpu_threads = c.threads or threads
        name = c.section or f"torch {cpu_threads} threads"
        names.append(name)
        sections.setdefault(name, (cpu_threads if device.type == "cpu" else None, {}))[1][i] = (
            lambda c=c, x=x: c.fn(x))
    background = wait_for_quiet(quiet_wait_s)
    date = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    with torch.inference_mode():
        times, load = time_sections(sections, repeats, warmup, device, rounds)
    if measured_here:  # measured again after: the roof is the best rate seen in the run
        with intra_op_threads(threads):
            roof = roof.merge(measure_roof(device, tuple({c.precision for c in candidates}), threads,
                                           onnxruntime=any(c.form == "onnxruntime" for c in candidates)))
    rows: list[dict[str, Any]] = []
    for i, c in enumerate(candidates):
        lat = summarize(times[i], batch_size)
        achieved = c.flops * batch_size / (lat.median_ms / 1000.0) / 1e9
        roof_gflops = roof.gflops(c.precision)
        rows.append({
            "model": c.model, "form": c.form, "precision": c.precision, "param_count": round(c.params / 1e6, 4),
            "depth": c.depth, "infer_batch_size": int(batch_size), "infer_img_size": int(c.input_size[-1]),
            "input_size": list(c.input_size), "infer_gmacs": round(c.flops / 2 / 1e9, 4),
            "infer_step_time": lat.median_ms, "infer_step_time_p10": lat.p10_ms, "infer_step_time_p90": lat.p90_ms,
            "infer_samples_per_sec": lat.samples_per_sec, "achieved_gflops": achieved, "roof_gflops": roof_gflops,
            "roof_fraction": achieved / roof_gflops, "roof_components": roof.components_for(c.precision),
            "channels_last": bool(c.channels_last), "compile_time_s": c.compile_time_s,
            "stream_mode": c.stream_mode, "threads": int(c.threads or threads), "section": names[i],
            "device": str(device), "machine": machine_line(info), "cpu_simd": info["cpu_simd"],
            "repeats": len(times[i]), "warmup": int(warmup), "background_cpu": background,
            "loadavg_before": load[names[i]][0], "loadavg_after": load[names[i]][1],
            "torch_version": torch.__version__, "date": date, **c.extra,
        })
    return rows


def _strict_float32(fn: Callable[[torch.Tensor], Any], device: torch.device) -> Callable[[torch.Tensor], Any]:
    def run(x: torch.Tensor) -> Any:
        with precision_flags("float32", device):
            return fn(x)
    return run


def runner_candidate(runner: Runner, model: str, input_size: Sequence[int], flops: int, params: int,
                     depth: int | None = None) -> Candidate:
    """A Candidate that times a nondeep.inference form (its bare `fn` on an input it has prepared). `flops` and
    `params` are the fused model's: every form computes the same math."""
    stream_mode = None
    if INFERENCE_FORMS[runner.form].streams:
        stream_mode = "cuda_streams" if runner.device.type == "cuda" else "threads"
    compiled = runner.form.startswith("compiled")
    return Candidate(model, runner.form, runner.fn, tuple(int(s) for s in input_size), flops, params, depth,
                     channels_last=runner.channels_last, compile_time_s=runner.build_s if compiled else None,
                     stream_mode=stream_mode, extra={"build_s": runner.build_s, **runner.extra},
                     precision=runner.precision, threads=runner.threads, section=runner.section)


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
