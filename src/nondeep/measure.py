"""Measure a model: depth (traced, not declared), parameters, FLOPs, latency, and the machine's matmul roof."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Layers that compute: each adds one to a path's depth. BN, activations, pooling and adds do not.
_DEPTH_MODULES = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)
_DEPTH_FUNCTIONS = {torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d,
                    torch.nn.functional.linear, torch.conv2d, torch.matmul, torch.mm, torch.addmm}
_DEPTH_ATEN = {"aten.convolution", "aten.conv2d", "aten.conv1d", "aten.conv3d", "aten.linear", "aten.addmm",
               "aten.mm", "aten.matmul", "aten.bmm"}


def _input_tensor(model: nn.Module, input_size: Sequence[int] | None) -> torch.Tensor:
    if input_size is None:
        input_size = model.pretrained_cfg["input_size"] if hasattr(model, "pretrained_cfg") else (3, 224, 224)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.randn(1, *input_size, device=device)


def _longest_path(graph: torch.fx.Graph, counts: Callable[[torch.fx.Node], bool]) -> int:
    depth: dict[torch.fx.Node, int] = {}
    for node in graph.nodes:  # nodes are in topological order
        before = max((depth[n] for n in node.all_input_nodes), default=0)
        depth[node] = before + (1 if counts(node) else 0)
    return max((depth[n] for n in graph.nodes if n.op == "output"), default=0)


def depth(model: nn.Module, input_size: Sequence[int] | None = None) -> int:
    """Length of the longest input-to-output path counting conv and linear layers.

    Traces the model with torch.fx (no input needed); a model that fx cannot trace is exported with
    torch.export on a random input of `input_size` (C, H, W; default: the model's config) and its ATen
    graph is measured instead. A torchvision resnet50 gives 50, ParNet 12.
    """
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:
        exported = torch.export.export(model.eval(), (_input_tensor(model, input_size),))
        return _longest_path(exported.graph, lambda n: n.op == "call_function"
                             and str(n.target).rsplit(".", 1)[0] in _DEPTH_ATEN)
    modules = dict(traced.named_modules())

    def counts(node: torch.fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(modules[node.target], _DEPTH_MODULES)
        return node.op == "call_function" and node.target in _DEPTH_FUNCTIONS

    return _longest_path(traced.graph, counts)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, input_size: Sequence[int] | None = None, batch_size: int = 1) -> int:
    """FLOPs (2 x multiply-adds, torch.utils.flop_counter's convention) of one forward pass in eval mode.
    Works on a model built under `torch.device("meta")`, so large models cost nothing to count."""
    x = _input_tensor(model, input_size)
    x = x.expand(batch_size, *x.shape[1:])
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops()


@dataclass
class Latency:
    """Per-call wall time in milliseconds over `repeats` timed calls after `warmup` untimed ones."""
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    batch_size: int

    @property
    def samples_per_sec(self) -> float:
        return 1000.0 * self.batch_size / self.median_ms

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "samples_per_sec": self.samples_per_sec}


def _timed(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> list[float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


@torch.inference_mode()
def latency(model: nn.Module, input_size: Sequence[int] | None = None, batch_size: int = 1, warmup: int = 5,
            repeats: int = 30, channels_last: bool = False) -> Latency:
    """Median forward latency in eval mode (inference_mode), with the 10th/90th percentiles as the spread."""
    x = _input_tensor(model, input_size).repeat(batch_size, 1, 1, 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    times = _timed(lambda: model(x), warmup, repeats, x.device)
    deciles = statistics.quantiles(times, n=10)
    return Latency(statistics.median(times), deciles[0], deciles[-1], repeats, batch_size)


@torch.inference_mode()
def matmul_peak_gflops(size: int = 2048, repeats: int = 10, device: str | torch.device = "cpu") -> float:
    """The machine's float32 roof: GFLOP/s of a size x size matmul on the current threads (median)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    times = _timed(lambda: a @ b, 2, repeats, device)
    return 2 * size ** 3 / (statistics.median(times) / 1000.0) / 1e9
