"""Stream-parallel ParNet inference: the streams are independent until the fusion blocks, so run them at once.

`StreamParallel(model, mode)` wraps a ParNet (fused or not; it shares the model's modules, it copies nothing
in the CPU modes) and computes the same function as `model(x)`:

    stem -> input of stream 1 -> downsample -> input of stream 2 -> ... (sequential: each input needs the last)
    stream i on its input, all streams concurrently
    fuse_streams(outputs) -> forward_head

With `overlap=True` (the default) stream i is launched as soon as its input exists, so stream 1 runs while
the downsamples that make the inputs of streams 2, 3 are still computing.

Modes
- ``"threads"`` (CPU, or any device): one long-lived Python worker thread per stream except the last, which
  runs on the calling thread. PyTorch ops release the GIL, so the streams really run at the same time.
  Intra-op threads: with PyTorch's OpenMP backend (the usual CPU build; see
  ``torch.__config__.parallel_info()``) ``torch.set_num_threads(n)`` sets the OpenMP/MKL thread count *of the
  calling OS thread* (OpenMP's nthreads ICV and ``mkl_set_num_threads_local``), and also a process-wide default
  that threads started later pick up. So each worker sets its own count once when it starts
  (``threads_per_stream``), then the process-wide default is put back; the calling thread's count is
  switched to ``threads_per_stream`` only for the parallel section (``main_threads_in_parallel``) and
  restored before the fusion blocks and the head. Measured on 2 cores: see docs/results/latency.md.
  Outputs are bitwise equal to the sequential run when each stream gets as many intra-op threads as the
  sequential run had (the same kernels on the same inputs; the tests check it). With fewer threads a kernel
  may block its sums differently: the outputs then differ in the last bits (<= 1e-6 on parnet_tiny), exactly
  as the sequential model's own outputs do between 1 and 2 threads.
- ``"fork"`` (CPU): TorchScript ``torch.jit.fork``/``wait`` on PyTorch's inter-op thread pool
  (``torch.get_num_interop_threads()`` threads, each with the intra-op count the process had when the pool
  started). Eager ``torch.jit.fork`` runs its function synchronously, so the stem, downsamples and streams are
  scripted (``torch.jit.script``, sharing the parameters). Build the wrapper after fusing: a scripted copy made
  before ``reparameterize_model`` would not see the fused convs. TorchScript is deprecated in PyTorch 2.x;
  the mode is kept as a point of comparison.
- ``"cuda_streams"`` (one GPU): one CUDA stream per ParNet stream. Each side stream waits on the main stream
  after its input is made (``wait_stream``), the input is marked as used there (``record_stream``) so the
  caching allocator cannot hand its memory out while the side stream still reads it, and the main stream
  waits on every side stream before the fusion (the outputs are marked as used on the main stream).
- ``"devices"`` (several GPUs, the paper's setting): stream i lives on ``devices[i % len(devices)]``, the stem,
  fusion blocks and head on ``devices[0]``; the stream inputs are copied to their device and the outputs back,
  each stream launched from its own host thread (as ``torch.nn.parallel.parallel_apply`` does). The wrapper
  moves the model's modules to their devices in place (as ``nn.Module.to`` does).

The GPU modes raise `DeviceUnavailableError` (a NondeepError) when CUDA or the named devices are absent.
"""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator, List, Literal, Sequence

import torch
from torch import nn

from .errors import NondeepError
from .models import _helpers

Mode = Literal["threads", "fork", "cuda_streams", "devices"]
MODES: tuple[str, ...] = ("threads", "fork", "cuda_streams", "devices")


class DeviceUnavailableError(NondeepError, RuntimeError):
    """A stream-parallel mode needs a device this machine does not have."""


class NotStreamParallelError(NondeepError, TypeError):
    """The model has no parallel streams to run (it is not a ParNet)."""


def is_stream_parallel_capable(model: nn.Module) -> bool:
    """True for a ParNet-like model: `stream_inputs`, `streams`, `fuse_streams` and `forward_head`."""
    return all(hasattr(model, a) for a in ("stream_inputs", "streams", "fuse_streams", "forward_head"))


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Set this OS thread's intra-op thread count for the block, then put it back (no-op for None)."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _grad_context(grad_enabled: bool, inference: bool):
    """Grad and inference mode are thread-local: a worker must enter the caller's."""
    if inference:
        return torch.inference_mode()
    return torch.set_grad_enabled(grad_enabled)


class _StreamWorkers:
    """One single-thread executor per stream (a stream always runs on the same OS thread), each thread having
    set its own intra-op thread count when it started. Not copied or pickled with the module."""

    def __init__(self, count: int, threads: int | None) -> None:
        self.threads = threads
        started = threading.Barrier(count + 1) if count else None
        process_default = torch.get_num_threads()

        def init() -> None:
            if threads is not None:
                torch.set_num_threads(threads)  # this thread's OpenMP/MKL count, and the process default
            started.wait()

        self.executors = [ThreadPoolExecutor(1, thread_name_prefix=f"nondeep-stream{i}", initializer=init)
                          for i in range(count)]
        for ex in self.executors:
            ex.submit(lambda: None)  # start the thread now, so that init runs before we restore the default
        if started is not None:
            started.wait()
        # The workers' set_num_threads also changed the default that threads started later inherit.
        torch.set_num_threads(process_default)

    def submit(self, index: int, fn, *args: Any) -> Future:
        return self.executors[index].submit(fn, *args)

    def shutdown(self) -> None:
        for ex in self.executors:
            ex.shutdown(wait=False)


class _Stage(nn.Module):
    """The module that makes a stream's input (stem or downsample) and the stream itself, for scripting."""

    def __init__(self, entry: nn.Module, stream: nn.Module) -> None:
        super().__init__()
        self.entry, self.stream = entry, stream


class _ForkedStreams(nn.Module):
    """Scripted: make each stream's input, fork the stream at once; the last stream runs inline."""

    def __init__(self, stages: Sequence[_Stage]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        futures: List[torch.jit.Future[torch.Tensor]] = []
        n = len(self.stages)
        last = x
        i = 0
        for stage in self.stages:
            x = stage.entry(x)
            if i < n - 1:
                futures.append(torch.jit.fork(stage.stream, x))
            else:
                last = stage.stream(x)
            i += 1
        outs: List[torch.Tensor] = []
        for fut in futures:
            outs.append(torch.jit.wait(fut))
        outs.append(last)
        return outs


class StreamParallel(nn.Module):
    """Run a ParNet's streams concurrently; the same outputs as `model(x)`.

    Args:
        model: a ParNet (fused with `reparameterize_model` for inference, or not).
        mode: "threads" | "fork" (CPU), "cuda_streams" (one GPU), "devices" (one stream per GPU).
        devices: for "devices", the devices of the streams (stream i on devices[i % len]; stem and fusion on
            devices[0]); for "cuda_streams", the one GPU to use (default: the current CUDA device).
        threads_per_stream: intra-op threads of each stream's thread ("threads" mode); default
            max(1, torch.get_num_threads() // number of streams).
        overlap: launch each stream as soon as its input exists (otherwise after all inputs are made).
        main_threads_in_parallel: the calling thread's intra-op threads while the streams run ("threads"
            mode; it makes the later inputs and runs the last stream); default `threads_per_stream`.
    """

    def __init__(self, model: nn.Module, mode: Mode = "threads", devices: Sequence[str | torch.device] | None = None,
                 threads_per_stream: int | None = None, overlap: bool = True,
                 main_threads_in_parallel: int | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not is_stream_parallel_capable(model):
            raise NotStreamParallelError(
                f"StreamParallel needs a ParNet (stream_inputs, streams, fuse_streams, forward_head); "
                f"got {type(model).__name__}")
        self.model = model
        self.mode = mode
        self.overlap = overlap
        self.num_streams = len(model.streams)
        self.threads_per_stream = threads_per_stream or max(1, torch.get_num_threads() // self.num_streams)
        self.main_threads_in_parallel = main_threads_in_parallel or self.threads_per_stream
        self.devices: list[torch.device] = []
        self._workers: _StreamWorkers | None = None
        self._workers_lock = threading.Lock()
        self._cuda_streams: dict[torch.device, list[torch.cuda.Stream]] = {}
        self._scripted: torch.jit.ScriptModule | None = None
        if mode in ("cuda_streams", "devices"):
            self._place_on_devices(devices)
        elif devices is not None:
            raise ValueError(f"devices is for the GPU modes ('cuda_streams', 'devices'), not {mode!r}")
        if mode == "fork":
            # Not registered as a submodule: it shares the model's parameters, which must appear once.
            object.__setattr__(self, "_scripted", self._script())

    # ----------------------------------------------------------------------------------------- set-up
    def _place_on_devices(self, devices: Sequence[str | torch.device] | None) -> None:
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"StreamParallel mode {self.mode!r} needs CUDA, and torch.cuda.is_available() is False on this "
                f"machine: use mode='threads' (or 'fork') on CPU")
        if devices is None:
            devices = [torch.device("cuda", torch.cuda.current_device())]
            if self.mode == "devices":
                devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        devs = [torch.device(d) for d in devices]
        for d in devs:
            if d.type != "cuda":
                raise DeviceUnavailableError(f"StreamParallel mode {self.mode!r} runs on CUDA devices, got {d}")
            index = d.index if d.index is not None else torch.cuda.current_device()
            if index >= torch.cuda.device_count():
                raise DeviceUnavailableError(f"device {d} does not exist: this machine has "
                                             f"{torch.cuda.device_count()} CUDA device(s)")
        devs = [torch.device("cuda", d.index if d.index is not None else torch.cuda.current_device()) for d in devs]
        if self.mode == "cuda_streams" and len(devs) != 1:
            raise ValueError(f"mode 'cuda_streams' uses one GPU; got devices {devs} (use mode='devices')")
        self.devices = devs
        self.model.to(devs[0])
        if self.mode == "devices":
            for i, stream in enumerate(self.model.streams):
                stream.to(self.stream_device(i))

    def stream_device(self, index: int) -> torch.device:
        return self.devices[index % len(self.devices)] if self.devices else torch.device("cpu")

    def _script(self) -> torch.jit.ScriptModule:
        stages = [_Stage(entry, stream) for entry, stream in zip(self._entries(), self.model.streams)]
        if len(stages) != self.num_streams:
            raise NotStreamParallelError("mode 'fork' needs the ParNet layout (stem, downsamples, streams)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
            return torch.jit.script(_ForkedStreams(stages))

    def _entries(self) -> list[nn.Module]:
        return [self.model.stem, *self.model.downsamples]

    def _get_workers(self) -> _StreamWorkers:
        with self._workers_lock:
            if self._workers is None:
                threads = self.threads_per_stream if self.mode == "threads" else None
                count = self.num_streams - 1 if self.mode == "threads" else self.num_streams
                self._workers = _StreamWorkers(count, threads)
            return self._workers

    def close(self) -> None:
        """Stop the worker threads (they are restarted on the next forward)."""
        if self._workers is not None:
            self._workers.shutdown()
            self._workers = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:
        # Threads, locks and CUDA streams are not copied with the module (copy.deepcopy, pickling).
        state = self.__dict__.copy()
        state.update(_workers=None, _workers_lock=None, _cuda_streams={})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._workers_lock = threading.Lock()

    def extra_repr(self) -> str:
        extra = f", devices={[str(d) for d in self.devices]}" if self.devices else ""
        return (f"mode={self.mode!r}, streams={self.num_streams}, overlap={self.overlap}, "
                f"threads_per_stream={self.threads_per_stream}{extra}")

    # ----------------------------------------------------------------------------------------- forward
    def _inputs(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """The stream inputs one at a time (as soon as each exists) when overlapping, else all first."""
        model = self.model
        if self.overlap and hasattr(model, "stem") and hasattr(model, "downsamples"):
            x = model.stem(_helpers.check_input(x, model.name, model.in_chans, model.input_divisor))
            yield x
            for down in model.downsamples:
                x = down(x)
                yield x
        else:
            yield from model.stream_inputs(x)

    def forward_streams(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The streams' outputs, computed concurrently."""
        if self.mode == "threads":
            return self._streams_threads(x)
        if self.mode == "fork":
            return self._streams_fork(x)
        if self.mode == "cuda_streams":
            return self._streams_cuda(x)
        return self._streams_devices(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.fuse_streams(self.forward_streams(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.forward_features(x))

    def _streams_threads(self, x: torch.Tensor) -> list[torch.Tensor]:
        streams = self.model.streams
        if self.num_streams == 1:
            return [streams[0](next(iter(self._inputs(x))))]
        workers = self._get_workers()
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(stream: nn.Module, inp: torch.Tensor) -> torch.Tensor:
            with _grad_context(grad, inference):
                return stream(inp)

        futures: list[Future] = []
        last: torch.Tensor | None = None
        with intra_op_threads(self.main_threads_in_parallel):
            for i, inp in enumerate(self._inputs(x)):
                if i < self.num_streams - 1:
                    futures.append(workers.submit(i, run, streams[i], inp))
                else:
                    last = streams[i](inp)
            return [f.result() for f in futures] + [last]

    def _streams_fork(self, x: torch.Tensor) -> list[torch.Tensor]:
        model = self.model
        x = _helpers.check_input(x, model.name, model.in_chans, model.input_divisor)
        return list(self._scripted(x))

    def _streams_cuda(self, x: torch.Tensor) -> list[torch.Tensor]:
        device = self.devices[0]
        x = x.to(device, non_blocking=True)
        side = self._cuda_streams.get(device)
        if side is None:
            side = self._cuda_streams[device] = [torch.cuda.Stream(device) for _ in range(self.num_streams)]
        main = torch.cuda.current_stream(device)
        launched: list[tuple[torch.cuda.Stream, torch.Tensor]] = []
        with torch.cuda.device(device):
            for stream, s, inp in zip(self.model.streams, side, self._inputs(x)):
                s.wait_stream(main)  # the input is made on the main stream: wait for it there
                with torch.cuda.stream(s):
                    out = stream(inp)
                inp.record_stream(s)  # the allocator must not reuse inp's memory before s has read it
                launched.append((s, out))
            outs = []
            for s, out in launched:
                main.wait_stream(s)
                out.record_stream(main)  # out was allocated on s and is read on main
                outs.append(out)
        return outs

    def _streams_devices(self, x: torch.Tensor) -> list[torch.Tensor]:
        main_device = self.devices[0]
        x = x.to(main_device, non_blocking=True)
        workers = self._get_workers()
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(stream: nn.Module, inp: torch.Tensor, device: torch.device) -> torch.Tensor:
            # Each host thread launches on its device's current stream; cross-device copies synchronise
            # the source and destination devices' current streams.
            with torch.cuda.device(device), _grad_context(grad, inference):
                return stream(inp.to(device, non_blocking=True))

        futures = [workers.submit(i, run, self.model.streams[i], inp, self.stream_device(i))
                   for i, inp in enumerate(self._inputs(x))]
        return [f.result().to(main_device, non_blocking=True) for f in futures]


def stream_parallel(model: nn.Module, mode: Mode = "threads", **kwargs: Any) -> StreamParallel:
    """`StreamParallel(model, mode, **kwargs)`, for symmetry with reparameterize_model."""
    return StreamParallel(model, mode, **kwargs)


__all__ = ["StreamParallel", "stream_parallel", "is_stream_parallel_capable", "intra_op_threads",
           "DeviceUnavailableError", "NotStreamParallelError", "MODES"]
