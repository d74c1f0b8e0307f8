"""Checkpoints: one safetensors file holding the model, optimizer and EMA tensors, with the rest of the state
(epoch, step, recipe, metrics, model name and arguments) as JSON in the file's metadata.

Nothing is unpickled: safetensors stores raw tensors and the state is JSON. Writes go to a temporary file
that is flushed and renamed, so a crash leaves the previous checkpoint intact. The metadata records a
SHA-256 of the tensor data, and the header a SHA-256 of the metadata (which holds the tensors' one), so a
truncated or altered file is refused on load, never half-loaded. Checkpoints of format v1 (before the
metadata was covered) still load, checked by their tensor checksum only.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .errors import NondeepError
from .report import atomic_write_bytes

FORMAT = "nondeep-checkpoint-v2"
_TENSOR_ONLY_FORMATS = ("nondeep-checkpoint-v1",)  # older files: their checksum covers the tensors only
_META_DIGEST = "nondeep_sha256"  # header key: SHA-256 of the metadata JSON, as stored


class CheckpointError(NondeepError):
    """A checkpoint that is missing, corrupt, or does not fit the model asked for."""


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (safetensors) and the JSON-able rest."""
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, ema: nn.Module | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write model (+ optimizer, EMA, extra tensors such as RNG states) and `meta` (JSON-able) atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = dict(meta, format=FORMAT)
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update({f"optim.{k}": v.detach().cpu().contiguous() for k, v in opt_tensors.items()})
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous()
    meta["sha256"] = _digest(tensors)
    meta_json = json.dumps(meta)
    atomic_write_bytes(path, st_save(tensors, metadata={"nondeep": meta_json, _META_DIGEST: _sha256(meta_json)}))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file, from one read of the whole file.

    One read is a consistent snapshot even while another process replaces the file by rename (a run saving
    last.safetensors); safe_open maps the path again after reading the header and can see two versions.
    Raises SafetensorError / ValueError / KeyError / OSError / struct.error on a damaged file."""
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    return st_load(data), metadata


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All tensors (by prefix: model., optim., ema., extra.) and the meta dict, verified against its hash."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the .safetensors file a training run wrote")
    try:
        tensors, metadata = read_safetensors(path)
        meta = json.loads(metadata["nondeep"])
    except (SafetensorError, ValueError, KeyError, TypeError, OSError, struct.error) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}): use another "
                              f"checkpoint (e.g. best.safetensors / last.safetensors) or retrain") from err
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, *_TENSOR_ONLY_FORMATS):
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} is not a nondeep checkpoint (format {found!r}): pass a .safetensors file "
                              f"that `nondeep train` wrote")
    meta_ok = meta["format"] in _TENSOR_ONLY_FORMATS or metadata.get(_META_DIGEST) == _sha256(metadata["nondeep"])
    if not meta_ok or _digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} fails its checksum (altered or partly written): use another "
                              f"checkpoint or retrain")
    return tensors, meta


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_model(path: str | Path, map_location: str | torch.device = "cpu", num_classes: int | None = None,
               use_ema: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the registered model a checkpoint was trained as and load its weights strictly; eval mode.
    `num_classes`, when given, must match the checkpoint's (a clear error otherwise)."""
    tensors, meta = read_checkpoint(path)
    trained_classes = meta.get("model_kwargs", {}).get("num_classes")
    if num_classes is not None and trained_classes is not None and num_classes != trained_classes:
        raise CheckpointError(f"checkpoint {path} was trained for {trained_classes} classes, not {num_classes}: "
                              f"evaluate it on a dataset with {trained_classes} classes or fine-tune it")
    weights = _with_prefix(tensors, "ema.module.") if use_ema else _with_prefix(tensors, "model.")
    if use_ema and not weights:
        raise CheckpointError(f"checkpoint {path} holds no EMA weights: train with --ema-decay > 0")
    return model_from_weights(path, meta, weights).to(map_location).eval(), meta


def model_from_weights(path: str | Path, meta: dict[str, Any], weights: dict[str, torch.Tensor]) -> nn.Module:
    """The model `meta` names, built with its model_kwargs and loaded strictly with `weights`; a CheckpointError
    (one line) when the metadata does not describe these tensors or the data it records."""
    from .models import create_model

    kwargs = meta.get("model_kwargs")
    described = f"model {meta.get('model')!r} with {kwargs}"
    try:
        if not isinstance(kwargs, dict):
            raise TypeError("model_kwargs is not a mapping")
        model = create_model(meta["model"], **kwargs)
        model.load_state_dict(weights, strict=True)
    except (NondeepError, TypeError, ValueError, KeyError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path}: its metadata ({described}) does not fit its weights "
                              f"({reason[:160]}): the file was edited or not written by `nondeep train`; use "
                              f"another checkpoint or retrain") from err
    data = meta.get("data") or {}
    for key, built in (("in_chans", getattr(model, "in_chans", None)), ("num_classes", getattr(model, "num_classes", None))):
        recorded = data.get(key)
        if recorded is not None and built is not None and recorded != built:
            raise CheckpointError(f"checkpoint {path}: its metadata records data with {key} {recorded} but its "
                                  f"weights are a model with {key} {built}: the file was edited; use another "
                                  f"checkpoint or retrain")
    return model


def load_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                        ema: nn.Module | None = None, expect: Callable[[dict[str, Any]], None] | None = None,
                        ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore model/optimizer/EMA in place for --resume; returns (meta, extra tensors). expect(meta), when
    given, runs before anything is loaded and raises when the checkpoint is not the one asked for."""
    tensors, meta = read_checkpoint(path)
    if expect is not None:
        expect(meta)
    try:
        model.load_state_dict(_with_prefix(tensors, "model."), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} holds another model's weights ({str(err).splitlines()[0][:120]}): "
                              f"resume it with the model and --model-kwargs it was trained with") from err
    if optimizer is not None and "optimizer" in meta:
        optimizer.load_state_dict(_unflatten_optimizer(_with_prefix(tensors, "optim."), meta["optimizer"]))
    if ema is not None:
        ema.load_state_dict(_with_prefix(tensors, "ema."), strict=True)
    return meta, _with_prefix(tensors, "extra.")
