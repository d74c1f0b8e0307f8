"""A roof that is a roof: the highest rate measured on the device in the same run, and where the run ran.

    roof = measure_roof("cpu", threads=2)            # a large matmul and a large conv, float32, best of N
    roof.gflops("float32"), roof.components          # the max, and every measured rate

Rates count nominal FLOPs (2 x multiply-adds of the direct algorithm, torch.utils.flop_counter's convention),
the same count as a model's achieved GFLOP/s. A conv library may compute fewer (Winograd): its rate can then
pass the FMA units' peak, and so can a model's, which is why the conv is measured too and the roof is the
maximum. A form's roof is the maximum over the rates measured in its precision or a more precise one (a fast
float32 kernel bounds a float16 form too). Each rate is the best of `repeats` calls: a roof is what the device
can do, not what it did under load. A model's roof fraction above 1 is then a bug (bench.check_row says so).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .forms import PRECISIONS, precision_flags

# The precisions whose measured rates bound a form's: its own and the more precise ones.
BOUNDED_BY = {"float32": ("float32", "tf32"), "tf32": ("float32", "tf32"),
              "float16": ("float16", "float32", "tf32"), "bfloat16": ("bfloat16", "float32", "tf32")}


@dataclass
class RoofComponent:
    kernel: str       # "matmul" or "conv"
    precision: str
    backend: str      # "torch" or "onnxruntime"
    shape: str
    gflops: float
    threads: int | None = None  # CPU intra-op threads it ran on

    @property
    def key(self) -> str:
        where = f" {self.threads}t" if self.threads else ""
        return f"{self.kernel} {self.precision} {self.backend} {self.shape}{where}"


@dataclass
class Roof:
    device: str
    threads: int | None
    components: list[RoofComponent] = field(default_factory=list)

    def gflops(self, precision: str = "float32") -> float:
        """The roof of a form in `precision`: the highest rate measured in it or a more precise one."""
        rates = [c.gflops for c in self.components if c.precision in BOUNDED_BY[precision]]
        if not rates:
            raise ValueError(f"no roof measured for precision {precision!r} on {self.device}")
        return max(rates)

    def components_for(self, precision: str) -> dict[str, float]:
        return {c.key: c.gflops for c in self.components if c.precision in BOUNDED_BY[precision]}

    def merge(self, other: Roof) -> Roof:
        """Each kernel's best rate over both measurements (a roof measured before and after a run)."""
        best: dict[str, RoofComponent] = {}
        for c in [*self.components, *other.components]:
            if c.key not in best or c.gflops > best[c.key].gflops:
                best[c.key] = c
        return Roof(self.device, self.threads, list(best.values()))

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "threads": self.threads,
                "components": [asdict(c) for c in self.components]}


def _best_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best * 1000.0


def _shapes(device: torch.device) -> tuple[int, tuple[int, int, int, int]]:
    """matmul size, conv (batch, channels, height, width): large enough to run near the device's best rate."""
    return (8192, (32, 256, 56, 56)) if device.type == "cuda" else (2048, (1, 256, 56, 56))


def _small_shapes(device: torch.device) -> tuple[int, tuple[int, int, int, int]]:
    """Short kernels (a few ms on a CPU core): on a shared machine their best call catches an undisturbed time
    slice, as a model's short calls do, where a 100 ms kernel cannot."""
    return (4096, (8, 128, 28, 28)) if device.type == "cuda" else (512, (1, 64, 56, 56))


@torch.inference_mode()
def matmul_gflops(device: torch.device, precision: str = "float32", size: int | None = None,
                  warmup: int = 2, repeats: int = 10) -> float:
    size = size or _shapes(device)[0]
    a = torch.randn(size, size, device=device, dtype=PRECISIONS[precision])
    b = torch.randn(size, size, device=device, dtype=PRECISIONS[precision])
    with precision_flags(precision, device):
        ms = _best_ms(lambda: a @ b, device, warmup, repeats)
    return 2 * size ** 3 / (ms / 1000.0) / 1e9


@torch.inference_mode()
def conv_gflops(device: torch.device, precision: str = "float32", shape: tuple[int, int, int, int] | None = None,
                warmup: int = 3, repeats: int = 10) -> float:
    """A 3x3 conv, C -> C channels, padding 1 (channels_last on a GPU, where it is the fast layout)."""
    n, c, h, w = shape or _shapes(device)[1]
    dtype = PRECISIONS[precision]
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    weight = torch.randn(c, c, 3, 3, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    with precision_flags(precision, device):
        ms = _best_ms(lambda: F.conv2d(x, weight, padding=1), device, warmup, repeats)
    return 2 * 9 * c * c * h * w * n / (ms / 1000.0) / 1e9


def onnxruntime_conv_gflops(threads: int, shape: tuple[int, int, int, int] | None = None,
                            warmup: int = 3, repeats: int = 10) -> float:
    """The same conv exported by nondeep.export and run in ONNX Runtime (its own conv kernels) on `threads`."""
    from ..export import onnx_bytes, ort_session

    n, c, h, w = shape or _shapes(torch.device("cpu"))[1]
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
    x = torch.randn(n, c, h, w)
    session = ort_session(onnx_bytes(conv, x), threads)
    feed = {"input": x.numpy()}
    ms = _best_ms(lambda: session.run(None, feed), torch.device("cpu"), warmup, repeats)
    return 2 * 9 * c * c * h * w * n / (ms / 1000.0) / 1e9


def measure_roof(device: str | torch.device = "cpu", precisions: tuple[str, ...] = ("float32",),
                 threads: int | None = None, onnxruntime: bool = False,
                 thread_counts: tuple[int, ...] | None = None) -> Roof:
    """Measure the large matmul and the large conv on `device` in each precision (a GPU's float32 adds TF32);
    on a CPU on each of `thread_counts` (default `threads` and 1: under load one thread can outrun two, and
    the roof is the highest rate seen); with `onnxruntime`, the conv in ONNX Runtime too."""
    from ..parallel import intra_op_threads

    device = torch.device(device)
    wanted = {"float32"} | set(precisions)
    if device.type == "cuda":
        wanted.add("tf32")
    threads = threads or torch.get_num_threads()
    counts = [None] if device.type == "cuda" else list(dict.fromkeys(thread_counts or (threads, 1)))
    roof = Roof(str(device), threads if device.type == "cpu" else None)
    for count in counts:
        for (matmul_size, conv_shape), repeats in ((_shapes(device), 10), (_small_shapes(device), 30)):
            conv_name = "3x3 " + "x".join(map(str, conv_shape))
            with intra_op_threads(count):
                for precision in [p for p in PRECISIONS if p in wanted]:
                    roof.components.append(RoofComponent("matmul", precision, "torch", f"{matmul_size}^2",
                                                         matmul_gflops(device, precision, matmul_size,
                                                                       repeats=repeats), count))
                    roof.components.append(RoofComponent("conv", precision, "torch", conv_name,
                                                         conv_gflops(device, precision, conv_shape,
                                                                     repeats=repeats), count))
            if onnxruntime and device.type == "cpu":
                roof.components.append(RoofComponent("conv", "float32", "onnxruntime", conv_name,
                                                     onnxruntime_conv_gflops(count, conv_shape, repeats=repeats),
                                                     count))
    return roof


def device_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Where a result was measured: CPU model and flags (lscpu), core count, GPU name, torch and library
    versions, and the load average (1, 5, 15 min) now."""
    device = torch.device(device)
    info: dict[str, Any] = {"cpu_model": platform.processor() or platform.machine(), "cpu_flags": "",
                            "cpus": os.cpu_count(), "torch_version": torch.__version__,
                            "platform": platform.platform(), "loadavg": list(os.getloadavg())}
    lscpu = shutil.which("lscpu")
    try:
        text = subprocess.run([lscpu], capture_output=True, text=True, timeout=10).stdout if lscpu else ""
    except (OSError, subprocess.SubprocessError):
        text = ""
    fields = {k.strip(): v for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}
    if fields:
        info["cpu_model"] = fields.get("Model name", info["cpu_model"]).strip()
        info["cpu_flags"] = fields.get("Flags", "").strip()
    else:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}
            info["cpu_model"] = cpuinfo.get("model name", info["cpu_model"])
            info["cpu_flags"] = cpuinfo.get("flags", "")
        except OSError:
            pass
    flags = info["cpu_flags"].split()
    info["cpu_simd"] = " ".join(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4_2", "neon",
                                                                  "asimd", "sve")))
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    gpu_capability=f"{props.major}.{props.minor}", cuda_version=torch.version.cuda,
                    cudnn_version=torch.backends.cudnn.version())
    else:
        info["gpu"] = None
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line: CPU model, CPUs, SIMD flags, GPU, torch."""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (f"{info['cpu_model']}, {info['cpus']} CPUs ({info['cpu_simd'] or 'no SIMD flags read'}){gpu}, "
            f"torch {info['torch_version']}")


__all__ = ["Roof", "RoofComponent", "measure_roof", "matmul_gflops", "conv_gflops", "onnxruntime_conv_gflops",
           "device_info", "machine_line", "BOUNDED_BY"]
