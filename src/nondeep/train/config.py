"""The training recipe: one dataclass, loadable from YAML (`configs/*.yaml`), checked field by field."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import NondeepError

# torch.compile's modes, and auto: reduce-overhead (CUDA graphs) on one CUDA device, where it trained parnet_tiny
# 3.5x faster than the eager step (an H200, docs/results/train_throughput-gpu.md) and inductor's default mode ran
# at the eager step's speed (issue 14); default elsewhere (CUDA graphs are CUDA's; DDP keeps inductor's default)
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode_for(mode: str, device_type: str, world_size: int) -> str:
    """The torch.compile mode a run uses: `mode` as given, or for auto the one measured best on the device."""
    if mode != "auto":
        return mode
    return "reduce-overhead" if device_type == "cuda" and world_size == 1 else "default"


class ConfigError(NondeepError):
    """A config key that does not exist, a value of the wrong type, or an option out of range."""


@dataclass
class TrainConfig:
    # what to train, on what, where
    model: str = "parnet_tiny"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    image_size: int | None = None          # side to train at (in-memory sets resized on load); None = own
    in_chans: int | None = None            # ImageFolder trees: 1 (grey) or 3; None = as the images are
    out: str | None = None                 # run folder; default runs/<date>-<model>-<data>
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    max_train_samples: int | None = None
    # fraction of the training set held out (fixed images, the same for every seed) to choose best.safetensors;
    # the test split is evaluated once, at the end. 0 = train on all images and select nothing (best = last)
    val_split: float = 0.1
    # recipe
    epochs: int = 10
    batch_size: int = 256
    eval_batch_size: int = 1024
    optimizer: str = "sgd"                 # sgd (Nesterov) | adamw
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"             # cosine | onecycle | step | constant
    warmup_epochs: float = 0.0             # linear warm-up (cosine, step, constant)
    step_milestones: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.8])  # fractions of training
    step_gamma: float = 0.2
    label_smoothing: float = 0.1
    grad_clip: float = 0.0                 # max grad norm; 0 = off
    ema_decay: float = 0.0                 # EMA of weights; 0 = off (e.g. 0.999)
    # augmentation (small datasets: on the tensor, per batch)
    crop_padding: int = 2
    flip: bool = True
    cutout: int = 0
    tta_flip: bool = False                 # evaluate each image and its mirror, logits averaged (airbench's TTA)
    # speed
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    amp: bool = True                       # bf16 mixed precision on CUDA
    cpu_bf16: bool = False                 # bf16 mixed precision on a CPU that has it natively (AVX512-BF16, AMX)
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "auto"             # torch.compile mode; auto: reduce-overhead on one GPU, else default
    threads: int | None = None
    num_workers: int = 2
    # reproducibility and safety
    seed: int = 0
    deterministic: bool = False
    checkpoint_every_steps: int = 0        # 0 = only at epoch ends
    checkpoint_every_minutes: float = 0.0
    on_nan: str = "stop"                   # stop | skip
    progress: bool = True

    def validate(self) -> "TrainConfig":
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.val_split < 1, "val_split must be in [0, 1)"),
            (self.max_train_samples is None or self.max_train_samples >= 1, "max_train_samples must be >= 1"),
            (self.optimizer in ("sgd", "adamw"), "optimizer must be sgd or adamw"),
            (self.schedule in ("cosine", "onecycle", "step", "constant"),
             "schedule must be cosine, onecycle, step or constant"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.on_nan in ("stop", "skip"), "on_nan must be stop or skip"),
            (self.compile_mode in COMPILE_MODES, f"compile_mode must be one of {', '.join(COMPILE_MODES)}"),
            (self.checkpoint_every_steps >= 0 and self.checkpoint_every_minutes >= 0,
             "checkpoint intervals must be >= 0"),
            (self.crop_padding >= 0 and self.cutout >= 0, "crop_padding and cutout must be >= 0"),
            (self.image_size is None or self.image_size >= 8, "image_size must be >= 8"),
            (self.in_chans in (None, 1, 3), "in_chans must be 1 (grey) or 3 (colour)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message}; check the config file or the command-line flag")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:  # list[float]: each item too (a milestone "a" would otherwise fail mid-training)
        return isinstance(value, list) and all(_type_ok(item, typing.get_args(hint)[0]) for item in value)
    if origin is dict:  # model_kwargs: keyword names
        return isinstance(value, dict) and all(isinstance(key, str) for key in value)
    return isinstance(value, origin or hint)


def _type_name(hint: Any) -> str:
    """int, list[float], int | None: as the hint is written."""
    return str(hint).replace("typing.", "") if typing.get_args(hint) else hint.__name__


def config_from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Apply `values` over `base` (default TrainConfig()), refusing unknown keys and wrong types."""
    config = dataclasses.replace(base) if base else TrainConfig()
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}; valid keys are the fields of "
                              f"nondeep.train.TrainConfig")
        hint = _HINTS[key]
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # YAML reads "lr: 1" as an int
        if not _type_ok(value, hint):
            raise ConfigError(f"config key {key!r} must be {_type_name(hint)}, got "
                              f"{type(value).__name__} {value!r}")
        setattr(config, key, value)
    return config.validate()


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from err
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must be a mapping of keys to values")
    return config_from_dict(values, base)
