"""`nondeep train` and `nondeep eval`. Every TrainConfig field is a flag (--batch-size, --no-flip, ...);
precedence: the defaults, then --config YAML, then flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing

from ..report import format_table
from ..train import TrainConfig, config_from_dict, evaluate_checkpoint, load_config, train
from ..train.config import ConfigError

_SHORT_HELP = {
    "model": "registered model name (see `nondeep models`)",
    "data": "fashion-mnist | cifar10 | cifar100 | PATH to an ImageFolder tree",
    "data_dir": "folder holding the dataset files (else $NONDEEP_DATA, Debian's package, the cache, download)",
    "out": "run folder: checkpoints, metrics.csv, summary.json (default runs/<date>-<model>-<data>)",
    "max_train_samples": "train on the first N images only (smoke runs)",
    "model_kwargs": "JSON object of extra model arguments, e.g. '{\"width_multiplier\": 2}'",
    "image_size": "the side images are trained at; an in-memory set (Fashion-MNIST, CIFAR) is resized once on load "
                  "(default: the images' own)",
    "in_chans": "ImageFolder trees: 1 (grey) or 3 (colour) (default: as the images are)",
    "batch_size": "images a step; lowered (with the lr) when a step would not fit in memory",
    "cpu_bf16": "train in bf16 autocast on a CPU with native bf16 (AVX512-BF16 or AMX; refused elsewhere): "
                "docs/results/cpu_bf16.md measures its accuracy, train_throughput.md its speed",
}


def _flag_type(hint: typing.Any):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None -> X
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return json.loads if typing.get_origin(hint) is dict else hint


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{_SHORT_HELP.get(f.name, '')} (default: {default})".strip()
        if hints[f.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(hints[f.name]) is list:
            parser.add_argument(flag, type=float, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_flag_type(hints[f.name]), default=None, help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = load_config(args.config) if args.config else TrainConfig()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    return config_from_dict(given, base)


def cmd_train(args: argparse.Namespace) -> None:
    summary = train(config_from_args(args), resume=args.resume, force=args.force)
    if summary.get("interrupted"):
        print(f"interrupted ({summary['stopped_by']}) after {summary['epochs']} of {summary['epochs_planned']} "
              f"epochs: checkpoint saved at {summary['checkpoint']}; continue with --resume (the same command "
              f"with --resume added)", file=sys.stderr)
    elif summary:
        keys = ["model", "data", "epochs", "test_accuracy", "fused_test_accuracy", "params", "depth", "train_seconds"]
        print(format_table([{k: summary[k] for k in keys}]))
        print(f"run folder: {summary['out']}")


def cmd_eval(args: argparse.Namespace) -> None:
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    result = evaluate_checkpoint(args.checkpoint, data=args.data, data_dir=args.data_dir, fused=args.fused,
                                 device=args.device, use_ema=args.ema, batch_size=args.batch_size,
                                 tta_flip=args.tta_flip)
    print(format_table([result]))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a registered model on Fashion-MNIST, CIFAR or an ImageFolder tree",
                       description="Train a model. Flags override --config YAML, which overrides the defaults. "
                                   "Under `torchrun --nproc_per_node=N` it runs DistributedDataParallel.")
    p.add_argument("--config", help="YAML file of TrainConfig fields (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="write the run into an --out folder that holds files "
                   "nondeep did not write (files of the same names are replaced)")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its dataset's test split")
    p.add_argument("checkpoint", help="a .safetensors file written by `nondeep train`")
    p.add_argument("--fused", action="store_true", help="evaluate the reparameterised (fused) model")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average the logits of each image and its mirror (default: as the run evaluated)")
    p.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, help="images a forward pass (default: 256, lowered to fit in memory)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.set_defaults(func=cmd_eval)


__all__ = ["ConfigError", "add_config_flags", "config_from_args", "register"]
