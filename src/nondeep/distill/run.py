"""`distill`: teach a student (any registered model) from teacher checkpoints with nondeep's one training loop.

Steps: read the teachers and the data; get the teacher logits (cached mode: over the fixed transfer set,
from the cache or computed once and stored; online mode: none yet, the teacher runs on every batch);
then `nondeep.train.train` with a DistillLoss, which writes the usual run folder; finally the student's
agreement with the teacher on the test split is added to summary.json.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..checkpoint import load_model
from ..data import Augment, TensorLoader, build_loaders, build_test_loader
from ..errors import NondeepError
from ..models import create_model
from ..report import write_json
from ..train import TrainConfig, train
from ..train.loop import default_run_dir, resolve_device
from .cache import cache_path, load_logits, save_logits, tensor_sha256
from .losses import LOSSES, CachedTargets, DistillLoss, OnlineTeacher
from .teacher import (TeacherCheckpoint, agreement, build_ensemble, logits_over, logits_over_images, predictions,
                      read_teachers)
from .transfer import TransferData, make_transfer_set


class DistillError(NondeepError):
    """Distillation options that do not fit together."""


def _check_options(loss: str, alpha: float, temperature: float, teacher_online: bool, transfer_copies: int) -> None:
    if loss not in LOSSES:
        raise DistillError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if not 0.0 <= alpha <= 1.0:
        raise DistillError(f"--alpha must be in [0, 1] (1 = teacher only, 0 = labels only), got {alpha}")
    if temperature <= 0:
        raise DistillError(f"--temperature must be > 0, got {temperature}")
    if transfer_copies < 0:
        raise DistillError(f"--transfer-copies must be >= 0, got {transfer_copies}")
    if teacher_online and transfer_copies:
        raise DistillError("--transfer-copies is for the cached mode; with --teacher-online the student already "
                           "sees a fresh augmented view every epoch: drop one of the two flags")


def cache_spec(teachers: Sequence[TeacherCheckpoint], info: Any, cfg: TrainConfig, transfer_images: torch.Tensor,
               eval_images: torch.Tensor, copies: int, transfer_seed: int, augment: Augment) -> dict[str, Any]:
    """Everything the cached logits depend on. The image hashes make the key exact (a different data folder
    with the same name, or a changed augmentation routine, misses); the readable fields name the difference."""
    return {
        "teachers": sorted(t.sha256 for t in teachers), "teacher_ema": sorted(t.uses_ema for t in teachers),
        "data": info.name, "num_train": int(transfer_images.shape[0]) // (copies + 1),
        "max_train_samples": cfg.max_train_samples, "val_split": cfg.val_split,
        "in_chans": info.in_chans, "image_size": list(info.image_size),
        "mean": [float(v) for v in info.mean], "std": [float(v) for v in info.std],
        "transfer_copies": copies, "transfer_seed": transfer_seed if copies else None,
        "transfer_augment": dataclasses.asdict(augment) if copies else None,
        "transfer_sha256": tensor_sha256(transfer_images), "eval_sha256": tensor_sha256(eval_images),
    }


def _labels(loader: Any) -> torch.Tensor:
    return loader.labels if isinstance(loader, TensorLoader) else torch.cat([batch[1].cpu() for batch in loader])


def distill(cfg: TrainConfig, teachers: Sequence[str], loss: str = "mimic", alpha: float = 1.0,
            temperature: float = 4.0, teacher_online: bool = False, transfer_copies: int = 0,
            cache_dir: str | os.PathLike | None = None, resume: bool = False, use_cache: bool = True,
            transfer_seed: int = 0) -> dict[str, Any]:
    """Train `cfg.model` as a student of `teachers` (an ensemble: the mean of their logits).

    loss: "mimic" (L2 on logits) or "kd" (Hinton, temperature T), mixed as alpha * distill + (1 - alpha) * CE.
    Cached mode (default): the student trains on the transfer set (originals + `transfer_copies` fixed
    augmented copies, seeded by `transfer_seed`) with no further augmentation, each epoch one pass over the
    training images with each image as one of its views drawn at random; the teacher's logits over it
    come from `cache_dir` (default $XDG_CACHE_HOME/nondeep/teacher_logits) or are computed once and stored
    there (`use_cache=False`: neither read nor written). teacher_online: the teacher runs on every augmented
    batch instead. Returns train()'s summary plus teacher_test_accuracy and teacher_agreement.
    """
    cfg.validate()
    _check_options(loss, alpha, temperature, teacher_online, transfer_copies)
    out = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    cfg = dataclasses.replace(cfg, out=str(out))  # fixed now, before the slow teacher work
    if not resume and (out / "last.safetensors").exists():
        raise NondeepError(f"{out} already holds a training run: pass --resume to continue it, or choose "
                           f"another --out (nothing was overwritten)")
    device = resolve_device(cfg.device)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # as train(): one GPU per rank
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    is_main = int(os.environ.get("RANK", "0")) == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # The data un-augmented, on the CPU: the transfer set and the test split are built from it.
    base_train, eval_loader, info = build_loaders(
        cfg.data, data_dir=cfg.data_dir, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
        augment=Augment.off(), val_split=cfg.val_split, max_train_samples=cfg.max_train_samples, device="cpu",
        seed=cfg.seed, num_workers=cfg.num_workers)
    eval_labels = _labels(eval_loader)
    # with a validation split the student is scored on it; the teacher is also scored once on the test split
    test_loader = (build_test_loader(cfg.data, data_dir=cfg.data_dir, batch_size=cfg.eval_batch_size, device="cpu")
                   if cfg.val_split > 0 else None)
    checkpoints = read_teachers(teachers, info)
    meta: dict[str, Any] = {"teachers": [t.describe() for t in checkpoints], "loss": loss, "alpha": alpha,
                            "temperature": temperature, "mode": "online" if teacher_online else "cached"}

    loaders = None
    if teacher_online:
        ensemble = build_ensemble(checkpoints, device)
        eval_logits = logits_over(ensemble, eval_loader, device)
        test_logits = logits_over(ensemble, test_loader, device) if test_loader is not None else eval_logits
        targets: Any = OnlineTeacher(ensemble)
        meta.update(cache="online", student_augmentation=dataclasses.asdict(
            Augment(crop_padding=cfg.crop_padding, flip=cfg.flip, cutout=cfg.cutout)))
    else:
        if not isinstance(base_train, TensorLoader):
            raise DistillError(f"cached teacher logits need an in-memory dataset (fashion-mnist, cifar10, "
                               f"cifar100), not the image tree {cfg.data}: pass --teacher-online")
        augment = Augment(crop_padding=cfg.crop_padding, flip=cfg.flip, cutout=cfg.cutout)
        if transfer_copies and not augment.enabled:
            raise DistillError("--transfer-copies needs an augmentation to make the copies differ: set "
                               "--crop-padding, --flip or --cutout, or use --transfer-copies 0")
        images, labels = make_transfer_set(base_train.images, base_train.labels, transfer_copies, augment,
                                           info.mean, transfer_seed)
        # the cached "eval" logits cover the validation images and then the test images, so a hit runs no teacher
        scored = (eval_loader.images if test_loader is None else torch.cat([eval_loader.images, test_loader.images]))
        spec = cache_spec(checkpoints, info, cfg, images, scored, transfer_copies, transfer_seed, augment)
        path = cache_path(cache_dir, spec) if use_cache else None
        shapes = {"train_logits": (images.shape[0], info.num_classes),
                  "eval_logits": (scored.shape[0], info.num_classes)}
        cached = load_logits(path, spec, shapes) if path is not None else None
        if cached is not None:
            train_logits, eval_logits = cached
        else:  # a miss: the one time the teacher runs over the transfer set
            ensemble = build_ensemble(checkpoints, device)
            train_logits = logits_over_images(ensemble, images, info.mean, info.std, cfg.eval_batch_size, device)
            eval_logits = logits_over_images(ensemble, scored, info.mean, info.std, cfg.eval_batch_size, device)
            if path is not None and is_main:
                save_logits(path, spec, train_logits, eval_logits)
            del ensemble
        n_eval = eval_loader.images.shape[0]
        eval_logits, test_logits = eval_logits[:n_eval], (eval_logits[n_eval:] if test_loader is not None
                                                          else eval_logits[:n_eval])
        targets = CachedTargets(train_logits)
        loaders = TransferData(images, labels, eval_loader.images, eval_loader.labels, info, cfg.batch_size,
                               cfg.eval_batch_size, cfg.seed, views=transfer_copies + 1)
        meta.update(cache="off" if path is None else ("hit" if cached is not None else "miss"),
                    cache_file=None if path is None else str(path), transfer_copies=transfer_copies,
                    transfer_seed=transfer_seed, transfer_set_size=int(images.shape[0]),
                    student_augmentation="none: the fixed transfer set (originals + copies) is the augmentation")

    teacher_pred = eval_logits.argmax(1)
    meta["eval_split"] = "val" if cfg.val_split > 0 else "test"  # what teacher_agreement is measured on
    run_meta: dict[str, Any] = {"distill": meta, "teacher_eval_accuracy": agreement(teacher_pred, eval_labels),
                                "teacher_test_accuracy": agreement(test_logits.argmax(1), eval_labels if test_loader
                                                                   is None else _labels(test_loader))}
    if not resume:  # the student as train() will initialise it (same seed, same builder)
        torch.manual_seed(cfg.seed)
        student = create_model(cfg.model, num_classes=info.num_classes, in_chans=info.in_chans,
                               **cfg.model_kwargs).to(device)
        run_meta["teacher_agreement_at_init"] = agreement(predictions(student, eval_loader, device), teacher_pred)
        del student

    loss_fn = DistillLoss(loss, targets, alpha=alpha, temperature=temperature, label_smoothing=cfg.label_smoothing)
    summary = train(cfg, resume=resume, loss_fn=loss_fn, run_meta=run_meta, loaders=loaders)
    if summary:  # rank 0: score the final student (EMA weights if any, as the summary does) against the teacher
        student, _ = load_model(summary["checkpoint"], map_location=device, use_ema=cfg.ema_decay > 0)
        summary["teacher_agreement"] = agreement(predictions(student, eval_loader, device), teacher_pred)
        write_json(Path(summary["out"]) / "summary.json", summary)
    return summary
