"""Mimic learning and knowledge distillation: deep teachers (one checkpoint or an ensemble) teach shallow or
non-deep students, through the one training loop (`nondeep.train.train` with a loss_fn).

cache.py     teacher logits on disk, keyed by teachers, data, preprocessing and transfer set; checked on read
losses.py    mimic_loss (L2 on logits), kd_loss (Hinton), DistillLoss (alpha-mixed with cross-entropy)
teacher.py   reading teacher checkpoints, the ensemble (mean of logits), predictions and agreement
transfer.py  the fixed transfer set (originals + K seeded augmented copies) and its loaders
run.py       distill(): the whole job
"""

from .cache import TeacherCacheError, default_cache_dir
from .losses import LOSSES, CachedTargets, DistillLoss, OnlineTeacher, kd_loss, mimic_loss
from .run import DistillError, distill
from .teacher import Ensemble, agreement, build_ensemble, predictions, read_teachers
from .transfer import TransferData, make_transfer_set

__all__ = ["distill", "DistillError", "TeacherCacheError", "default_cache_dir", "mimic_loss", "kd_loss",
           "DistillLoss", "CachedTargets", "OnlineTeacher", "LOSSES", "Ensemble", "build_ensemble", "read_teachers",
           "predictions", "agreement", "make_transfer_set", "TransferData"]
