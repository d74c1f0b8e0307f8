"""`nondeep distill`: train a student from teacher checkpoints (mimic L2 on logits, or Hinton KD). Every
TrainConfig field is a flag as in `nondeep train`; --student is the model field."""

from __future__ import annotations

import argparse

from ..distill import LOSSES, distill
from ..report import format_table
from .train import add_config_flags, config_from_args


def cmd_distill(args: argparse.Namespace) -> None:
    summary = distill(config_from_args(args), teachers=args.teacher, loss=args.loss, alpha=args.alpha,
                      temperature=args.temperature, teacher_online=args.teacher_online,
                      transfer_copies=args.transfer_copies, cache_dir=args.cache_dir, resume=args.resume,
                      use_cache=not args.no_cache, transfer_seed=args.transfer_seed)
    if summary:
        keys = ["model", "data", "epochs", "test_accuracy", "teacher_test_accuracy", "teacher_agreement", "params",
                "depth", "train_seconds"]
        print(format_table([{k: summary.get(k) for k in keys}]))
        print(f"teacher logits: {summary['distill']['cache']}"
              + (f" ({summary['distill']['cache_file']})" if summary["distill"].get("cache_file") else ""))
        print(f"run folder: {summary['out']}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="train a student on a teacher's logits (mimic learning / knowledge distillation)",
                       description="Distil teacher checkpoint(s) (an ensemble: the mean of their logits) into a "
                                   "student. Default: the teacher's logits over a fixed transfer set are computed "
                                   "once and cached on disk; --teacher-online runs the teacher on every batch.")
    p.add_argument("--teacher", action="append", required=True, metavar="CKPT",
                   help="teacher checkpoint (.safetensors from `nondeep train`); repeat for an ensemble")
    p.add_argument("--student", dest="model", metavar="MODEL", help="student model name (same as --model)")
    p.add_argument("--loss", choices=LOSSES, default="mimic",
                   help="mimic: L2 regression on logits (Ba & Caruana); kd: Hinton soft targets (default: mimic)")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="loss = alpha * distill + (1 - alpha) * label cross-entropy (default: 1.0, teacher only)")
    p.add_argument("--temperature", type=float, default=4.0, help="kd temperature T (default: 4.0)")
    p.add_argument("--teacher-online", action="store_true",
                   help="run the teacher on every augmented batch instead of caching its logits")
    p.add_argument("--transfer-copies", type=int, default=0, metavar="K",
                   help="cached mode: K fixed augmented copies of the training set; each epoch shows every image "
                   "once, as one of its K + 1 views (default: 0)")
    p.add_argument("--transfer-seed", type=int, default=0, help="seed of the transfer copies (default: 0)")
    p.add_argument("--cache-dir", metavar="D", help="teacher-logit cache folder, or one .safetensors file "
                   "(default: $XDG_CACHE_HOME/nondeep/teacher_logits, else ~/.cache/nondeep/teacher_logits)")
    p.add_argument("--no-cache", action="store_true", help="compute the teacher logits, neither read nor write the cache")
    p.add_argument("--config", help="YAML file of TrainConfig fields (e.g. configs/mimic_snn.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_flags(p)
    p.set_defaults(func=cmd_distill)
