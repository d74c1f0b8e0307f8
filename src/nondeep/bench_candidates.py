"""Timed candidates: one callable with what its benchmark row reports (Candidate), and the timing of many of
them against each other (time_candidates), one row each (its fields: nondeep.bench_rows.ROW_FIELDS).

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
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import measure
from .errors import NondeepError
from .inference.forms import FORMS as INFERENCE_FORMS, PRECISIONS, Runner
from .inference.roof import Roof, RoofComponent, device_info, machine_line, measure_roof
from .parallel import DeviceUnavailableError, intra_op_threads
from .timing import summarize, time_sections, wait_for_quiet

DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 5


def resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"--device {device} needs CUDA, and torch.cuda.is_available() is False on "
                                     f"this machine: use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise NondeepError(f"device {device} is not supported by the benchmark: use cpu or cuda")
    return device


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
    precisions = tuple({c.precision for c in candidates})
    with_ort = any(c.form == "onnxruntime" for c in candidates)
    with intra_op_threads(threads):
        if roof is None:
            if peak_gflops:
                roof = Roof(str(device), threads, [RoofComponent("given", "float32", "given", "", float(peak_gflops))])
            else:
                roof = measure_roof(device, precisions, threads, onnxruntime=with_ort)
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
            roof = roof.merge(measure_roof(device, precisions, threads, onnxruntime=with_ort))
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
