"""Inference benchmarks: latency, throughput and the fraction of the machine's matmul roof, fused and unfused.

    from nondeep.bench import benchmark_model
    rows = benchmark_model("parnet_s", batch_sizes=(1, 32), threads=2)   # one dict per (form, batch size)

Each row uses timm's benchmark.py field names where the meaning is the same (`model`, `param_count` in
millions, `infer_samples_per_sec`, `infer_step_time` in ms per batch, `infer_batch_size`, `infer_img_size`,
`infer_gmacs` per sample) plus nondeep's own: `form` (see FORMS), `depth` (measured, nondeep.measure.depth),
`infer_step_time_p10` / `_p90` (the spread), `achieved_gflops` (FLOPs of the timed forward / median time),
`roof_gflops` (float32 2048x2048 matmul GFLOP/s on the same threads, measured in the same run) and
`roof_fraction` (their ratio), `threads`, `device`, `torch_version`, `date`.

The forms of one model are timed in interleaved rounds (A, B, A, B, ...), not one after the other, so a
background load that comes and goes weighs on all of them alike; `background_cpu` records how busy the
machine's CPUs were (other processes) just before timing.

A roof fraction above 1 is possible: the roof is a matmul (MKL sgemm for float32 on CPU), and a CPU's
convolution library (oneDNN) can beat the BLAS on some CPUs (e.g. MKL on AMD CPUs). It is the reference
number the project agreed on, not the hardware's peak.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import measure
from .errors import NondeepError
from .models import create_model
from .parallel import DeviceUnavailableError, StreamParallel, intra_op_threads, is_stream_parallel_capable
from .reparam import reparameterize_model

log = logging.getLogger(__name__)

FORMS = ("unfused", "fused", "eager", "compiled", "stream_parallel", "onnxruntime")
"""unfused: the training-form model in eval mode; fused: after reparameterize_model; eager: a model with nothing
to fuse (e.g. a ResNet); compiled: torch.compile of the fused (or eager) model; stream_parallel:
nondeep.parallel.StreamParallel of the fused model ("threads" on CPU, "cuda_streams" on a GPU); onnxruntime:
the fused model exported with nondeep.export (benchmarks/bench_latency.py)."""

DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 5

# The fields of every row and their types (the JSON schema that tests and downstream tables rely on).
ROW_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": str, "form": str, "param_count": float, "depth": (int, type(None)), "infer_batch_size": int,
    "infer_img_size": int, "input_size": list, "infer_gmacs": float, "infer_step_time": float,
    "infer_step_time_p10": float, "infer_step_time_p90": float, "infer_samples_per_sec": float,
    "achieved_gflops": float, "roof_gflops": float, "roof_fraction": float, "channels_last": bool,
    "compile_time_s": (float, type(None)), "stream_mode": (str, type(None)), "threads": int, "device": str,
    "repeats": int, "warmup": int, "background_cpu": (float, type(None)), "torch_version": str, "date": str,
}

TABLE_COLUMNS = ["model", "form", "infer_batch_size", "infer_step_time", "infer_step_time_p10", "infer_step_time_p90",
                 "infer_samples_per_sec", "param_count", "infer_gmacs", "depth", "achieved_gflops", "roof_fraction"]


def cpu_busy_fraction(interval: float = 0.25) -> float | None:
    """Fraction of all CPUs busy over `interval` seconds (Linux /proc/stat); None where unavailable."""
    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    try:
        idle0, total0 = snapshot()
        time.sleep(interval)
        idle1, total1 = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, 1.0 - (idle1 - idle0) / max(1, total1 - total0))


def wait_for_quiet(max_wait_s: float = 0.0, threshold: float = 0.15, interval: float = 0.25) -> float | None:
    """Sample how busy the CPUs are (other processes); wait up to `max_wait_s` for it to drop below `threshold`.
    Returns the last sample (None where it cannot be measured)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = cpu_busy_fraction(interval)
        if busy is None or busy < threshold or time.monotonic() >= deadline:
            return busy
        time.sleep(1.0)


def _has_fusable_blocks(model: nn.Module) -> bool:
    return any(hasattr(m, "reparameterize") for m in model.modules())


def _model_label(model: nn.Module, fallback: str | None = None) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return fallback or cfg.get("architecture") or getattr(model, "name", None) or type(model).__name__


def _sync_fn(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device,
                     rounds: int | None = None) -> dict[str, list[float]]:
    """Per-call wall times (ms) of each function: `warmup` untimed calls each, then `repeats` timed calls each,
    spread over `rounds` rounds that visit the functions in turn (default: up to 5 rounds)."""
    sync = _sync_fn(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    rounds = max(1, min(rounds or 5, repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    times: dict[str, list[float]] = {name: [] for name in fns}
    for count in per_round:
        for name, fn in fns.items():
            for _ in range(count):
                start = time.perf_counter()
                fn()
                sync()
                times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def summarize(times: Sequence[float], batch_size: int) -> measure.Latency:
    """Median and 10th/90th percentiles (the median itself when there are too few samples for deciles)."""
    median = statistics.median(times)
    if len(times) >= 2:
        deciles = statistics.quantiles(times, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    else:
        p10 = p90 = median
    return measure.Latency(median, p10, p90, len(times), batch_size)


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


def module_candidate(module: nn.Module, model: str, form: str, input_size: Sequence[int], *,
                     depth: int | None = None, flops_of: nn.Module | None = None, **kwargs: Any) -> Candidate:
    """A Candidate that calls `module`; FLOPs and params are counted on `flops_of` (default the module)."""
    counted = flops_of if flops_of is not None else module
    return Candidate(model, form, module, tuple(int(s) for s in input_size),
                     measure.count_flops(counted, input_size), measure.count_params(counted), depth, **kwargs)


def time_candidates(candidates: Sequence[Candidate], batch_size: int = 1, repeats: int = DEFAULT_REPEATS,
                    warmup: int = DEFAULT_WARMUP, threads: int | None = None, device: str | torch.device = "cpu",
                    peak_gflops: float | None = None, rounds: int | None = None,
                    quiet_wait_s: float = 0.0) -> list[dict[str, Any]]:
    """Time the candidates against each other in interleaved rounds (inference mode, `threads` intra-op
    threads); one row (see ROW_FIELDS) per candidate. The roof is measured now unless `peak_gflops` is given."""
    device = resolve_device(device)
    threads = threads or torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    with intra_op_threads(threads):
        roof = float(peak_gflops or measure.matmul_peak_gflops(device=device))
        inputs = []
        for c in candidates:
            x = torch.randn(batch_size, *c.input_size, device=device)
            inputs.append(x.contiguous(memory_format=torch.channels_last) if c.channels_last else x)
        background = wait_for_quiet(quiet_wait_s)
        date = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        with torch.inference_mode():
            fns = {i: (lambda c=c, x=x: c.fn(x)) for i, (c, x) in enumerate(zip(candidates, inputs))}
            times = time_interleaved(fns, repeats, warmup, device, rounds)
    for i, c in enumerate(candidates):
        lat = summarize(times[i], batch_size)
        achieved = c.flops * batch_size / (lat.median_ms / 1000.0) / 1e9
        rows.append({
            "model": c.model, "form": c.form, "param_count": round(c.params / 1e6, 4), "depth": c.depth,
            "infer_batch_size": int(batch_size), "infer_img_size": int(c.input_size[-1]),
            "input_size": list(c.input_size), "infer_gmacs": round(c.flops / 2 / 1e9, 4),
            "infer_step_time": lat.median_ms, "infer_step_time_p10": lat.p10_ms, "infer_step_time_p90": lat.p90_ms,
            "infer_samples_per_sec": lat.samples_per_sec, "achieved_gflops": achieved, "roof_gflops": roof,
            "roof_fraction": achieved / roof, "channels_last": bool(c.channels_last),
            "compile_time_s": c.compile_time_s, "stream_mode": c.stream_mode, "threads": int(threads),
            "device": str(device), "repeats": len(times[i]), "warmup": int(warmup), "background_cpu": background,
            "torch_version": torch.__version__, "date": date, **c.extra,
        })
    return rows


def compile_candidate(module: nn.Module, model: str, input_size: Sequence[int], *, depth: int | None = None,
                      channels_last: bool = False, device: str | torch.device = "cpu",
                      flops_of: nn.Module | None = None, **compile_kwargs: Any) -> Candidate:
    """torch.compile(module) (static shapes), compiled now by one call whose wall time is `compile_time_s`."""
    device = torch.device(device)
    compiled = torch.compile(module, dynamic=False, **compile_kwargs)  # one static graph per batch size
    sample = torch.randn(1, *input_size, device=device)
    if channels_last:
        sample = sample.contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled(sample)
        _sync_fn(device)()
    elapsed = time.perf_counter() - start
    counted = flops_of if flops_of is not None else module
    return Candidate(model, "compiled", compiled, tuple(int(s) for s in input_size),
                     measure.count_flops(counted, input_size), measure.count_params(counted), depth,
                     channels_last=channels_last, compile_time_s=elapsed)


def benchmark_model(name_or_model: str | nn.Module, input_size: Sequence[int] | None = None,
                    batch_sizes: Sequence[int] = (1, 32), threads: int | None = None,
                    device: str | torch.device = "cpu", fused_and_unfused: bool = True,
                    channels_last: bool = False, compile: bool = False, stream_parallel: bool | str = False,
                    repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP, *, in_chans: int | None = None,
                    num_classes: int | None = None, peak_gflops: float | None = None,
                    model_name: str | None = None, rounds: int | None = None,
                    quiet_wait_s: float = 0.0) -> list[dict[str, Any]]:
    """Time one model's inference forms at each batch size; one row (dict, see ROW_FIELDS) per (batch, form).

    name_or_model: a registry name (anything nondeep.create_model takes, e.g. "parnet_s",
        "torchvision:resnet18") or an nn.Module (`model_name` labels it).
    input_size: (C, H, W); default the model's config. in_chans/num_classes go to create_model.
    threads: intra-op threads for the timing (restored afterwards); default torch's current count.
    fused_and_unfused: time the training form (eval mode) next to the fused one; a model with nothing to fuse
        is timed once, as form "eager".
    channels_last: models and inputs in channels-last memory format (every form).
    compile: also time torch.compile of the fused model; the first (compiling) call is timed separately
        as `compile_time_s`, then it is warmed up like the others.
    stream_parallel: also time nondeep.parallel.StreamParallel of the fused model (ParNets only); True picks
        "threads" on CPU and "cuda_streams" on a GPU, or name the mode.
    repeats/warmup: timed/untimed calls per form and batch size; the timed ones are spread over `rounds`
        interleaved rounds.
    peak_gflops: the roof; default nondeep.measure.matmul_peak_gflops on the same threads and device, now.
    quiet_wait_s: wait up to this long for other processes to leave the CPUs before timing.
    """
    device = resolve_device(device)
    if repeats < 1 or warmup < 0:
        raise NondeepError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise NondeepError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    model, label, size = build_model(name_or_model, input_size, in_chans, num_classes)
    label = model_name or label
    threads = threads or torch.get_num_threads()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    model = model.eval()
    parallel: StreamParallel | None = None
    with intra_op_threads(threads):
        try:
            depth: int | None = measure.depth(model, size)
        except Exception as err:  # a model neither fx nor torch.export can trace: report the rest
            log.warning("%s: depth not measured (%s)", label, err)
            depth = None
        fusable = _has_fusable_blocks(model)
        eager = reparameterize_model(model) if fusable else model
        forms: list[tuple[str, nn.Module]] = [("fused" if fusable else "eager", eager)]
        if fusable and fused_and_unfused:
            forms.insert(0, ("unfused", model))
        for _, m in forms:
            m.to(device=device, memory_format=memory_format)
        common = dict(depth=depth, channels_last=channels_last)
        candidates = [module_candidate(m, label, form, size, **common) for form, m in forms]
        if compile:
            candidates.append(compile_candidate(eager, label, size, device=device, **common))
        if stream_parallel:
            if is_stream_parallel_capable(eager):
                mode = stream_parallel if isinstance(stream_parallel, str) else (
                    "cuda_streams" if device.type == "cuda" else "threads")
                parallel = StreamParallel(eager, mode, devices=[device] if device.type == "cuda" else None)
                candidates.append(module_candidate(parallel, label, "stream_parallel", size, flops_of=eager,
                                                   stream_mode=mode, **common))
            else:
                log.warning("%s has no parallel streams: no stream_parallel row", label)
        roof = peak_gflops or measure.matmul_peak_gflops(device=device)
    try:
        rows: list[dict[str, Any]] = []
        for batch in batch_sizes:
            rows += time_candidates(candidates, int(batch), repeats, warmup, threads, device, roof, rounds,
                                    quiet_wait_s)
    finally:
        if parallel is not None:
            parallel.close()
    return rows


def check_row(row: dict[str, Any]) -> None:
    """Raise ValueError if a row lacks a field of ROW_FIELDS or has the wrong type (the JSON schema)."""
    for key, kind in ROW_FIELDS.items():
        if key not in row:
            raise ValueError(f"benchmark row lacks {key!r}")
        value = row[key]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ValueError(f"benchmark row field {key!r} is {type(value).__name__}, expected {kind}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"benchmark row field {key!r} is {value}")


def speedup(rows: Sequence[dict[str, Any]], slow: str, fast: str, batch_size: int = 1,
            model: str | None = None) -> float | None:
    """Median step time of form `slow` over that of form `fast` (None if either is missing)."""
    def pick(form: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["form"] == form and r["infer_batch_size"] == batch_size
                     and (model is None or r["model"] == model)), None)
    a, b = pick(slow), pick(fast)
    return a["infer_step_time"] / b["infer_step_time"] if a and b else None


def machine_description() -> str:
    """CPU model, core count, and the GPU if there is one."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} CPUs ({platform.system()} {platform.release()}){gpu}"


__all__ = ["benchmark_model", "build_model", "resolve_device", "Candidate", "module_candidate",
           "compile_candidate", "time_candidates", "time_interleaved", "summarize", "check_row", "speedup",
           "cpu_busy_fraction", "wait_for_quiet", "machine_description", "FORMS", "ROW_FIELDS", "TABLE_COLUMNS",
           "DEFAULT_REPEATS", "DEFAULT_WARMUP"]
