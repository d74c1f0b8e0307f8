"""The inference forms of a fused model: what each one runs, on which device, in which precision.

    runner = build_runner(fused, "graph", "cuda", "float16", example=x)   # ready to call: runner(x)

A `Runner` takes any float32 input, moves it to its device, dtype and memory format, runs its form with its
own intra-op thread count and returns float32 outputs. Its `fn` is the bare form on a prepared input, which is
what the benchmark times (the copy into a CUDA graph's static input and out of its static output included).
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import NondeepError
from ..hardware import native_cpu_bf16
from ..parallel import (DeviceUnavailableError, NotStreamParallelError, StreamParallel, intra_op_threads,
                        is_stream_parallel_capable)

PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "tf32": torch.float32, "float16": torch.float16,
                                      "bfloat16": torch.bfloat16}
"""float32 is strict (TF32 off on a GPU); tf32 is float32 storage with TF32 tensor-core math (GPU only)."""

TOLERANCE: dict[str, float] = {"float32": 1e-5, "tf32": 5e-3, "float16": 1e-2, "bfloat16": 5e-2}
"""Largest relative error (max |out - ref| / max |ref|) against the fused float32 eager model on the same device
that a form may have and still be chosen. float32: rounding only (other kernels sum in other orders). The
reduced precisions keep 10 (TF32, float16) or 7 (bfloat16) mantissa bits per op, and ~12-100 layers
accumulate that to a few 1e-3 (float16) or 1e-2 (bfloat16)."""


@dataclass(frozen=True)
class FormSpec:
    name: str
    devices: tuple[str, ...]
    description: str
    channels_last: bool = False
    streams: bool = False
    graph: bool = False
    float32_only: bool = False


FORMS: dict[str, FormSpec] = {s.name: s for s in (
    FormSpec("eager", ("cpu", "cuda"), "the fused model, eager, NCHW"),
    FormSpec("channels_last", ("cpu", "cuda"), "the fused model, eager, channels_last", channels_last=True),
    FormSpec("compiled", ("cpu", "cuda"), "torch.compile of the fused model (static shapes), channels_last",
             channels_last=True),
    FormSpec("onnxruntime", ("cpu",), "the fused model exported by nondeep.export, in ONNX Runtime (CPU provider)",
             float32_only=True),
    FormSpec("streams", ("cpu", "cuda"), "nondeep.parallel.StreamParallel of the fused model: its streams on "
             "threads (the intra-op threads split across them) on a CPU, on CUDA streams on a GPU", streams=True),
    FormSpec("graph", ("cuda",), "the fused model, channels_last, replayed from a CUDA graph (static input and "
             "output buffers)", channels_last=True, graph=True),
    FormSpec("streams_graph", ("cuda",), "StreamParallel 'cuda_streams' of the fused model, channels_last, the "
             "streams' CUDA streams captured in one CUDA graph", channels_last=True, streams=True, graph=True),
    FormSpec("compiled_graph", ("cuda",), "torch.compile of the fused model, channels_last, replayed from a CUDA "
             "graph", channels_last=True, graph=True),
)}

CPU_FORMS = tuple(n for n, s in FORMS.items() if "cpu" in s.devices)
GPU_FORMS = tuple(FORMS)


def resolve_precision(dtype: str | torch.dtype | None) -> str:
    """'float32', 'tf32', 'float16' or 'bfloat16' from a name or a torch dtype ('fp16', 'half', 'bf16' too)."""
    if dtype is None:
        return "float32"
    if isinstance(dtype, torch.dtype):
        names = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
        if dtype not in names:
            raise NondeepError(f"dtype {dtype} is not an inference precision: use one of {list(PRECISIONS)}")
        return names[dtype]
    aliases = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(str(dtype).lower(), str(dtype).lower())
    if name not in PRECISIONS:
        raise NondeepError(f"unknown precision {dtype!r}: use one of {list(PRECISIONS)}")
    return name


def check_form(form: str, device: torch.device, model: nn.Module, precision: str = "float32") -> FormSpec:
    """The form's spec; a NondeepError that says what to do when it cannot run here (bad input)."""
    spec = FORMS.get(form)
    if spec is None:
        raise NondeepError(f"unknown inference form {form!r}: choose from {', '.join(FORMS)}")
    if "cuda" in spec.devices and "cpu" not in spec.devices and device.type != "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"form {form!r} needs a CUDA GPU, and this machine has none "
                                         f"(torch.cuda.is_available() is False): use the CPU forms "
                                         f"{', '.join(CPU_FORMS)}")
        raise NondeepError(f"form {form!r} runs on a CUDA device: pass device='cuda' (--device cuda)")
    if device.type not in spec.devices:
        raise NondeepError(f"form {form!r} runs on {' or '.join(spec.devices)}, not {device.type}")
    if spec.streams and not is_stream_parallel_capable(model):
        raise NotStreamParallelError(f"form {form!r} runs a ParNet's streams side by side, and "
                                     f"{type(model).__name__} has no parallel streams: use another form")
    if spec.float32_only and precision != "float32":
        raise NondeepError(f"form {form!r} runs nondeep's float32 export: ask it for float32, or a torch form for "
                           f"{precision}")
    if device.type == "cpu" and precision != "float32":
        if precision != "bfloat16" or not native_cpu_bf16():
            raise NondeepError(f"precision {precision!r} does not run natively on this CPU: use float32 (bfloat16 "
                               f"needs a CPU with AVX512-BF16 or AMX)")
    return spec


def requested_pairs(forms: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    """The (form, precision) pairs a request asks for: a float32-only form (ONNX Runtime) is asked in float32
    alone when float32 is among the precisions; without float32 its pairs stay, for check_form to refuse."""
    return [(f, p) for f in forms for p in precisions
            if p == "float32" or "float32" not in precisions or not getattr(FORMS.get(f), "float32_only", False)]


@contextmanager
def precision_flags(precision: str, device: torch.device) -> Iterator[None]:
    """On a GPU, TF32 on for 'tf32' and off for every other precision (strict float32), then restored."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (float64), the measure TOLERANCE bounds."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


class CudaGraph:
    """Replay `fn` from CUDA graphs, one captured per input shape (and dtype and strides), each with a static
    input and output buffer: a call copies its input in, replays, and returns a copy of the output."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device, warmup: int = 3) -> None:
        self.fn, self.device, self.warmup = fn, device, warmup
        self._graphs: dict[tuple, tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def capture(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor]:
        static_in = x.clone()  # keeps x's memory format
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):  # warm up (cuDNN plans, workspaces, side streams) off the capture
            for _ in range(self.warmup):
                self.fn(static_in)
        main.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        entry = (static_in, graph, static_out)
        self._graphs[(tuple(x.shape), x.dtype, x.stride())] = entry
        return entry

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        entry = self._graphs.get((tuple(x.shape), x.dtype, x.stride())) or self.capture(x)
        static_in, graph, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [key[0] for key in self._graphs]


@dataclass
class Runner:
    """One form of a fused model, built and ready. `fn` runs the form on a prepared input (see `prepare`);
    calling the runner prepares any input, applies its thread count and precision, returns float32 outputs.
    `section` names its timing regime: forms that share it can be timed interleaved without a thread count
    changing between their calls."""
    form: str
    precision: str
    device: torch.device
    threads: int
    channels_last: bool
    fn: Callable[[torch.Tensor], torch.Tensor]
    section: str
    build_s: float = 0.0
    module: nn.Module | None = None
    graph: CudaGraph | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last and x.dim() == 4 else torch.contiguous_format
        return x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=memory_format)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), intra_op_threads(self.threads if self.device.type == "cpu" else None):
            return self.fn(self.prepare(x)).float()

    def close(self) -> None:
        if isinstance(self.module, StreamParallel):
            self.module.close()

    def label(self) -> str:
        where = f", {self.threads} thread{'s' * (self.threads != 1)}" if self.device.type == "cpu" else ""
        return f"{self.form} ({self.precision}{where})"


class ModelVariants:
    """Copies of the fused model per (dtype, memory format), made once and shared by the forms that need them."""

    def __init__(self, fused: nn.Module, device: torch.device) -> None:
        self.fused, self.device = fused, device
        self._copies: dict[tuple[torch.dtype, bool], nn.Module] = {}

    def get(self, dtype: torch.dtype, channels_last: bool) -> nn.Module:
        key = (dtype, channels_last)
        if key not in self._copies:
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            model = copy.deepcopy(self.fused).eval()
            self._copies[key] = model.to(device=self.device, dtype=dtype, memory_format=memory_format)
        return self._copies[key]


def _section(form: str, device: torch.device, threads: int, extra: str = "") -> str:
    if device.type == "cuda":
        return f"cuda:{device.index or 0}"
    if form == "onnxruntime":
        return f"onnxruntime {threads} threads"
    return f"torch {threads} threads{extra}"


def _onnxruntime_fn(model: nn.Module, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Runtime on the model exported by nondeep.export (dynamic batch), one session per image size."""
    from ..export import onnx_bytes, ort_session

    sessions: dict[tuple[int, ...], Any] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        session = sessions.get(tuple(x.shape[1:]))
        if session is None:
            sample = torch.zeros(1, *x.shape[1:])
            session = sessions[tuple(x.shape[1:])] = ort_session(onnx_bytes(model, sample, dynamic_batch=True),
                                                                 threads)
        return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    return run


def _with_precision(fn: Callable[[torch.Tensor], torch.Tensor], precision: str,
                    device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """`fn` with the precision's TF32 setting at every call (eager kernels read it per call, a capture once)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        with precision_flags(precision, device):
            return fn(x)
    return run


def build_runner(fused: nn.Module, form: str, device: str | torch.device = "cpu", precision: str = "float32",
                 threads: int | None = None, example: torch.Tensor | None = None,
                 variants: ModelVariants | None = None) -> Runner:
    """Build `form` of the fused (reparameterised, eval-mode) model on `device` in `precision`, on `threads`
    intra-op threads (CPU; default torch's current count). With `example`, the form is run once on it now (a
    compile, a CUDA graph capture, an ONNX export happen then, and `build_s` is their wall time)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    precision = resolve_precision(precision)
    spec = check_form(form, device, fused, precision)
    threads = threads or torch.get_num_threads()
    variants = variants or ModelVariants(fused, device)
    dtype = PRECISIONS[precision]
    model = variants.get(dtype, spec.channels_last)
    section = _section(form, device, threads)
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    fn: Callable[[torch.Tensor], torch.Tensor]
    if form == "onnxruntime":
        fn, model = _onnxruntime_fn(model, threads), None
        import onnxruntime
        extra["onnxruntime_version"] = onnxruntime.__version__
    elif spec.streams:
        if device.type == "cuda":
            model = StreamParallel(model, "cuda_streams", devices=[device])
        else:
            per_stream = max(1, threads // len(model.streams))
            model = StreamParallel(model, "threads", threads_per_stream=per_stream)
            section = f"streams {per_stream} thread(s)/stream"
            extra["threads_per_stream"] = per_stream
        fn = model
    elif form in ("compiled", "compiled_graph"):
        fn = torch.compile(model, dynamic=False)  # one static graph per input shape
    else:
        fn = model
    graph = None
    if spec.graph:
        fn = graph = CudaGraph(fn, device)
    if device.type == "cuda":
        fn = _with_precision(fn, precision, device)
    runner = Runner(form, precision, device, threads, spec.channels_last, fn, section, module=model, graph=graph,
                    extra=extra)
    if example is not None:
        runner(example)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        runner.build_s = time.perf_counter() - start
    return runner


__all__ = ["FORMS", "CPU_FORMS", "GPU_FORMS", "PRECISIONS", "TOLERANCE", "FormSpec", "Runner", "CudaGraph",
           "ModelVariants", "build_runner", "requested_pairs", "check_form", "resolve_precision", "precision_flags",
           "relative_error"]
