"""Teacher logits on disk: computed once, reused by every later student run with the same setup.

One safetensors file per setup, written atomically. Its metadata records the key (the setup, as JSON) and a
SHA-256 of the tensors, so a file made for another setup is refused with a message that names what
differs, and a truncated or altered file is refused rather than silently reused. The file name is a hash
of the key; `--cache-dir` may also name one `.safetensors` file, which is then used for any setup (and
therefore checked against the key on every read).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save as st_save

from ..checkpoint import CheckpointError, read_safetensors
from ..report import atomic_write_bytes

FORMAT = "nondeep-teacher-logits-v1"
_TENSORS = ("train_logits", "eval_logits")


class TeacherCacheError(CheckpointError):
    """A teacher-logit cache file that is corrupt or was made for another teacher, dataset or transfer set."""


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/nondeep/teacher_logits, else ~/.cache/nondeep/teacher_logits."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "nondeep" / "teacher_logits"


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a CPU tensor's raw bytes (no copy: numpy exposes the buffer)."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256()
    h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def key_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: str | os.PathLike | None, spec: dict[str, Any]) -> Path:
    """The file for `spec`: <dir>/<key hash>.safetensors, or `cache_dir` itself if it names a .safetensors file."""
    where = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if where.suffix == ".safetensors":
        return where
    return where / f"teacher-logits-{key_hash(spec)[:24]}.safetensors"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256("".join(tensor_sha256(tensors[k]) for k in sorted(tensors)).encode()).hexdigest()


def save_logits(path: str | os.PathLike, spec: dict[str, Any], train_logits: torch.Tensor,
                eval_logits: torch.Tensor) -> None:
    """Write both logit tables with the key and a checksum; atomic, so a crash never leaves half a file."""
    tensors = {"train_logits": train_logits.float().cpu().contiguous(),
               "eval_logits": eval_logits.float().cpu().contiguous()}
    meta = {"format": FORMAT, "key": key_hash(spec), "spec": spec,
            "shapes": {k: list(v.shape) for k, v in tensors.items()}, "sha256": _digest(tensors)}
    atomic_write_bytes(path, st_save(tensors, metadata={"nondeep": json.dumps(meta)}))


def _advice(path: Path) -> str:
    return f"delete {path} (it is recomputed on the next run) or pass --no-cache"


def load_logits(path: str | os.PathLike, spec: dict[str, Any],
                shapes: dict[str, tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(train_logits, eval_logits) cached for `spec`, or None when there is no file. A file that is corrupt,
    or whose key or shapes differ from what is asked, raises TeacherCacheError: never a silent reuse."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        tensors, metadata = read_safetensors(path)
        meta = json.loads(metadata["nondeep"])
    except (SafetensorError, ValueError, KeyError, OSError, TypeError, struct.error) as err:
        raise TeacherCacheError(f"teacher-logit cache {path} is corrupt or truncated ({type(err).__name__}): "
                                f"{_advice(path)}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TeacherCacheError(f"{path} is not a nondeep teacher-logit cache: {_advice(path)}")
    if set(tensors) != set(_TENSORS) or _digest(tensors) != meta.get("sha256"):
        raise TeacherCacheError(f"teacher-logit cache {path} fails its checksum (altered or partly written): "
                                f"{_advice(path)}")
    if meta.get("key") != key_hash(spec):
        stored = meta.get("spec") or {}
        differ = sorted(k for k in set(stored) | set(spec) if stored.get(k) != spec.get(k))
        raise TeacherCacheError(f"teacher-logit cache {path} was made for another setup (differs in: "
                                f"{', '.join(differ) or 'key'}): {_advice(path)}")
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise TeacherCacheError(f"teacher-logit cache {path} holds {name} of shape "
                                    f"{tuple(tensors[name].shape)}, expected {tuple(shape)}: {_advice(path)}")
    return tensors["train_logits"], tensors["eval_logits"]
