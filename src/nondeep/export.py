"""Export to ONNX: reparameterise, export, check against PyTorch in ONNX Runtime, time both.

    from nondeep.export import export_onnx
    result = export_onnx("parnet_s", "parnet_s.onnx")   # or a model, or a checkpoint path
    result["max_abs_err"], result["torch_latency_ms"], result["ort_latency_ms"]

The exported graph is the fused model (`nondeep.reparameterize_model`): one 3x3 conv per RepVGG block, which
is what makes ParNet fast at inference. The file is written only after ONNX Runtime has reproduced PyTorch's
outputs on fresh random inputs (max abs error < `tolerance`), and atomically (temporary file, then rename).
"""

from __future__ import annotations

import io
import json
import statistics
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import measure
from .errors import NondeepError
from .models import create_model
from .reparam import reparameterize_model
from .report import atomic_write_bytes

ONNX_HINT = "pip install nondeep[onnx]"
_PROTOBUF_LIMIT = 2 * 1024 ** 3
_CHECKPOINT_SUFFIXES = {".pt", ".pth", ".ckpt", ".safetensors", ".bin"}


def _import_onnx(runtime: bool = True) -> tuple[Any, Any]:
    try:
        import onnx
        ort = None
        if runtime:
            import onnxruntime as ort
    except ImportError as err:
        raise NondeepError(f"ONNX export needs onnx and onnxruntime ({err.name or err} is missing): "
                           f"{ONNX_HINT}") from err
    return onnx, ort


def load_model_or_checkpoint(model_or_name: str | Path | nn.Module, **model_kwargs: Any) -> tuple[nn.Module, str]:
    """A model instance as it is; an existing file as a checkpoint (nondeep.checkpoint.load_model); any other
    string as a registry name (nondeep's own, "torchvision:NAME" or "timm:NAME"). Returns (model, label)."""
    if isinstance(model_or_name, nn.Module):
        cfg = getattr(model_or_name, "pretrained_cfg", None) or {}
        return model_or_name, cfg.get("architecture", type(model_or_name).__name__)
    path = Path(model_or_name)
    if path.is_file():
        try:
            from .checkpoint import load_model  # the trainer's module; imported only when a checkpoint is given
        except ImportError as err:
            raise NondeepError(f"{path} looks like a checkpoint, but this nondeep cannot load checkpoints "
                               f"({err})") from err
        model, meta = load_model(path, map_location="cpu")
        data = meta.get("data") or {}
        if data.get("in_chans") and data.get("image_size"):  # the size it was trained at, over the default
            model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {},
                                        input_size=(int(data["in_chans"]), *map(int, data["image_size"])))
        return model, str(meta.get("model", path.stem))
    name = str(model_or_name)
    if not name.startswith(("torchvision:", "timm:")) and (
            path.suffix in _CHECKPOINT_SUFFIXES or "/" in name or "\\" in name):
        raise NondeepError(f"no such checkpoint file: {name}")
    return create_model(name, **model_kwargs), name


def _outputs(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in result):
        return list(result)
    raise NondeepError(f"ONNX export takes models that return a tensor or a list of tensors, not "
                       f"{type(result).__name__}")


def ort_session(data: bytes | str | Path, threads: int, spin_after_run: bool = False) -> Any:
    """An ONNX Runtime session (CPUExecutionProvider, all graph optimisations) on `threads` intra-op threads
    and one inter-op thread: the thread count PyTorch gets when the two are compared. Its threads stop spinning
    when a run returns (unless spin_after_run): left spinning, they take the cores from the next session's run,
    and models timed side by side read up to 3x slower than alone (docs/results/ort_spinning.md)."""
    _, ort = _import_onnx(runtime=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "0" if spin_after_run else "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = str(data) if isinstance(data, Path) else data
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_bytes(fused: nn.Module, sample: torch.Tensor, opset: int = 17, dynamic_batch: bool = False,
               metadata: dict[str, str] | None = None) -> bytes:
    """The serialised, checked ONNX graph of `fused` (an eval-mode float32 CPU model) traced on `sample`;
    input "input", outputs "output" (or "output_0", "output_1", ... for a list); `metadata` as properties."""
    onnx, _ = _import_onnx(runtime=False)
    with torch.no_grad():
        num_outputs = len(_outputs(fused(sample)))
    output_names = ["output"] if num_outputs == 1 else [f"output_{i}" for i in range(num_outputs)]
    dynamic_axes = ({name: {0: "batch"} for name in ["input", *output_names]} if dynamic_batch else None)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is the legacy one, and the tracer warns at the input
        # shape checks (they become constants in the graph: a wrong shape then fails in ONNX Runtime).
        warnings.simplefilter("ignore")
        # dynamo=False: the TorchScript-based exporter. With torch 2.15 the default (dynamo) exporter needs
        # onnxscript, one more dependency that nondeep[onnx] does not pull in, and takes seconds to
        # torch.export the model; the TorchScript exporter needs only onnx, exports a fused ParNet in well
        # under a second, and its graph (Conv, Sigmoid, Mul, GlobalAveragePool, Gemm) matches PyTorch
        # within 1e-6 in ONNX Runtime. It is deprecated but still shipped; revisit when it is removed.
        torch.onnx.export(fused, (sample,), buffer, dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def export_onnx(model_or_name: str | Path | nn.Module, path: str | Path, input_size: Sequence[int] | None = None,
                opset: int = 17, dynamic_batch: bool = False, check: bool = True, *, threads: int | None = None,
                tolerance: float = 1e-4, warmup: int = 5, repeats: int = 30,
                model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export the reparameterised model to ONNX at `path` and return a summary dict.

    model_or_name: a model, a registry name, or a checkpoint file (see `load_model_or_checkpoint`).
    input_size: (C, H, W); default the model's config.
    dynamic_batch: a symbolic batch dimension ("batch"); otherwise the graph is fixed at batch 1.
    check: run the ONNX file in ONNX Runtime (CPUExecutionProvider) on fresh random inputs (batch 1, and 3 with
        a dynamic batch) against the fused PyTorch model; NondeepError if the max abs error is not below
        `tolerance` (nothing is written then). Then time batch-1 inference of both on `threads` threads
        (default: torch's current count), median of `repeats` after `warmup` calls.
    """
    _, ort = _import_onnx(runtime=check)  # fail early, before any work, when onnx is missing
    model, label = load_model_or_checkpoint(model_or_name, **(model_kwargs or {}))
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    input_size = tuple(int(s) for s in (input_size or cfg.get("input_size") or ()))
    if len(input_size) != 3:
        raise NondeepError(f"{label}: give the input size (C, H, W): its config has none")
    fused = reparameterize_model(model).float().cpu()  # a deep copy in eval mode with every block folded
    param_bytes = sum(p.numel() * p.element_size() for p in fused.parameters())
    if param_bytes > _PROTOBUF_LIMIT * 0.95:
        raise NondeepError(f"{label} has {param_bytes / 1e9:.1f} GB of weights: more than one ONNX file holds "
                           "(2 GB protobuf limit)")

    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    try:
        sample = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
        meta = {"nondeep_model": label, "input_size": json.dumps(list(input_size)),
                "pretrained_cfg": json.dumps(cfg, default=str)}
        data = onnx_bytes(fused, sample, opset, dynamic_batch, meta)

        result: dict[str, Any] = {
            "model": label, "format": "onnx", "path": str(path), "opset": opset, "input_size": list(input_size),
            "dynamic_batch": dynamic_batch, "exporter": "torchscript", "fused_params_m":
            measure.count_params(fused) / 1e6, "file_mb": len(data) / 1e6, "torch_version": torch.__version__,
        }
        if check:
            session = ort_session(data, threads)
            generator = torch.Generator().manual_seed(1)  # fresh inputs, not the export sample
            errors, scale = [], 0.0
            for batch in ((1, 3) if dynamic_batch else (1,)):
                x = torch.randn(batch, *input_size, generator=generator)
                with torch.no_grad():
                    expected = _outputs(fused(x))
                got = session.run(None, {"input": x.numpy()})
                errors += [(torch.from_numpy(g) - e).abs().max().item() for g, e in zip(got, expected)]
                scale = max(scale, *(e.abs().max().item() for e in expected))
            max_err = max(errors)
            if not max_err < tolerance:
                raise NondeepError(f"ONNX Runtime differs from PyTorch on {label} by {max_err:.3g} (tolerance "
                                   f"{tolerance:g}): nothing written to {path}")
            torch_lat = measure.latency(fused, input_size, batch_size=1, warmup=warmup, repeats=repeats)
            x1 = {"input": torch.randn(1, *input_size, generator=generator).numpy()}
            ort_times = measure._timed(lambda: session.run(None, x1), warmup, repeats, torch.device("cpu"))
            result.update({
                # The error is absolute; the output scale says how strict that is (an untrained net's
                # logits are small, so compare with max_abs_output before trusting a tiny error).
                "max_abs_err": max_err, "max_abs_output": scale, "tolerance": tolerance, "checked_batch_sizes": [1, 3] if dynamic_batch else [1],
                "threads": threads, "torch_latency_ms": torch_lat.median_ms,
                "ort_latency_ms": statistics.median(ort_times), "latency_repeats": repeats,
                "onnxruntime_version": ort.__version__,
            })
        atomic_write_bytes(path, data)
    finally:
        torch.set_num_threads(previous_threads)
    return result
