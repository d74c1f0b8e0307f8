"""What a training run checks before it writes anything: the output path can be a run folder, the model
builds from its arguments and fits the data, a resumed checkpoint belongs to this run, and a batch fits in
memory. Each refusal is a NondeepError: one line that says what to do."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..data import DataInfo
from ..errors import NondeepError
from ..models import create_model
from .config import TrainConfig

MEMORY_SHARE = 0.5  # a batch may take this share of the device's memory (activations, estimated)
# Measured peak memory over the estimate (parnet_tiny, CPU, 2026-11-28): a training step took 1.8-2.1x the sum
# of its layers' outputs (28x28 batch 256, 64x64 batch 64, 224x224 batch 8), an evaluation 7-11x the largest
# output (parallel streams keep several alive); the factors leave a margin over those.
_TRAIN_FACTOR = 2.5
_EVAL_FACTOR = 12
EVAL_BATCH = 256    # `nondeep eval`'s batch unless --batch-size is given


def check_out_path(out: Path) -> None:
    """`out` must be a folder, or not exist yet under a folder this process can write."""
    if out.exists() and not out.is_dir():
        raise NondeepError(f"--out {out} is a file, not a folder: choose a folder for the run")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise NondeepError(f"cannot make the run folder {out}: {parent} is a file; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NondeepError(f"cannot write the run folder {out}: {parent} is not writable; choose another --out")


def model_kwargs_for(cfg: TrainConfig, num_classes: int, in_chans: int) -> dict[str, Any]:
    """The model's arguments: the data's class and channel counts, then --model-kwargs, which must agree."""
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        given = cfg.model_kwargs.get(key)
        if given is not None and given != value:
            what = "classes" if key == "num_classes" else "image channels"
            hint = " (for an image folder, --in-chans converts the images)" if key == "in_chans" else ""
            raise NondeepError(f"--model-kwargs {key}={given!r} does not fit {cfg.data}, which has {value} "
                               f"{what}: drop {key} from --model-kwargs, it is taken from the data{hint}")
    return {"num_classes": num_classes, "in_chans": in_chans, **cfg.model_kwargs}


def build_model(name: str, model_kwargs: dict[str, Any]) -> nn.Module:
    """create_model, with arguments the model does not take refused in one line."""
    try:
        return create_model(name, **model_kwargs)
    except TypeError as err:  # e.g. "ParNet.__init__() got an unexpected keyword argument 'foo'"
        reason = str(err).splitlines()[0]
        raise NondeepError(f"--model-kwargs do not fit {name} ({reason}): fix or drop that argument "
                           f"(`nondeep models` lists the models)") from err


def activation_bytes(model: nn.Module, input_size: tuple[int, ...]) -> tuple[int, int]:
    """(sum, largest) of the bytes of every leaf module's output for one image of `input_size` (C, H, W),
    from a forward pass in eval mode (no statistics change); an InputShapeError when the model cannot take
    that input."""
    sizes: list[int] = []

    def record(module: nn.Module, args: Any, output: Any) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                sizes.append(t.numel() * t.element_size())

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sum(sizes), max(sizes, default=0)


def device_memory(device: torch.device) -> int:
    """The device's total memory in bytes (a fixed number, so a resumed run picks the same batch)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fit_batches(cfg: TrainConfig, device: torch.device, num_classes: int, in_chans: int,
                image_size: tuple[int, int]) -> tuple[int, int]:
    """The (train, eval) batch sizes to use: cfg's, lowered (to a multiple of 8 where possible) when their
    estimated activations would take more than MEMORY_SHARE of the device's memory; says so on stderr."""
    kwargs = model_kwargs_for(cfg, num_classes, in_chans)
    with torch.random.fork_rng(devices=[]):  # the probe must not move the run's random stream
        probe = build_model(cfg.model, kwargs)
    total, largest = activation_bytes(probe, (in_chans, *image_size))
    budget = MEMORY_SHARE * device_memory(device)
    batch = _fit(cfg.batch_size, _TRAIN_FACTOR * total, budget)
    if batch < min(2, cfg.batch_size):  # BatchNorm needs two images a batch
        raise NondeepError(f"{cfg.model} on {in_chans}x{image_size[0]}x{image_size[1]} images needs about "
                           f"{_TRAIN_FACTOR * total / 2**30:.1f} GiB an image to train, more than half of this "
                           f"device's {budget / MEMORY_SHARE / 2**30:.1f} GiB allows for two: use a smaller "
                           f"--image-size or a smaller model")
    eval_batch = eval_batch_for(cfg.eval_batch_size, largest, device)
    if batch < cfg.batch_size:
        print(f"nondeep: batch {cfg.batch_size} of {in_chans}x{image_size[0]}x{image_size[1]} images would need about "
              f"{cfg.batch_size * _TRAIN_FACTOR * total / 2**30:.1f} GiB for {cfg.model}; training with batch "
              f"{batch} and lr {cfg.lr * batch / cfg.batch_size:.4g} (scaled with the batch) to fit in "
              f"{budget / 2**30:.1f} GiB", file=sys.stderr, flush=True)
    return batch, eval_batch


def eval_batch_for(batch: int, largest_activation: int, device: torch.device) -> int:
    """`batch`, lowered when evaluating it would take more than MEMORY_SHARE of the device's memory."""
    return _fit(batch, _EVAL_FACTOR * largest_activation, MEMORY_SHARE * device_memory(device))


def _fit(batch: int, bytes_per_image: float, budget: float) -> int:
    fits = int(budget // max(bytes_per_image, 1))
    if fits >= batch:
        return batch
    return max(1, fits // 8 * 8 or fits)


def fitted_config(cfg: TrainConfig, batch_size: int, eval_batch_size: int) -> TrainConfig:
    """cfg with the batch sizes the loaders use; a lowered training batch lowers the lr in proportion."""
    lr = cfg.lr if batch_size == cfg.batch_size else cfg.lr * batch_size / cfg.batch_size
    return dataclasses.replace(cfg, batch_size=batch_size, eval_batch_size=eval_batch_size, lr=lr)


def check_resume_fits(path: Path, meta: dict[str, Any], cfg: TrainConfig, model_kwargs: dict[str, Any],
                      info: DataInfo) -> None:
    """A checkpoint resumed into this run must come from the same model, data and batch."""
    data = meta.get("data") or {}
    trained = meta.get("config") or {}
    asked = {"data": info.name, "classes": list(info.classes), "in_chans": info.in_chans,
             "image_size": list(info.image_size), "model": cfg.model,
             "model_kwargs": json.loads(json.dumps(model_kwargs)), "batch_size": cfg.batch_size}
    had = {"data": data.get("name"), "classes": data.get("classes"), "in_chans": data.get("in_chans"),
           "image_size": data.get("image_size"), "model": meta.get("model"), "model_kwargs": meta.get("model_kwargs"),
           "batch_size": trained.get("batch_size")}
    differ = [k for k in asked if had[k] is not None and asked[k] != had[k]]
    if differ:
        key = differ[0]
        raise CheckpointError(f"--resume: {path} is a run of {had['model']} on {had['data']} whose {key} is "
                              f"{had[key]!r}, not {asked[key]!r}: resume it with the options it was started "
                              f"with, or choose another --out")
