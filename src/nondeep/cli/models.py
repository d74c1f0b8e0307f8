"""`nondeep models` and `nondeep info MODEL`: parameters, measured depth, FLOPs, latency."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import torch

from .. import measure
from ..models import create_model, list_models
from ..report import format_table
from ..reparam import reparameterize_model


def model_summary(name: str, input_size: Sequence[int] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Params (training and fused form), measured depth and fused FLOPs, computed on the meta device."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
        fused = reparameterize_model(model)
    input_size = tuple(input_size or model.pretrained_cfg["input_size"])
    return {
        "model": name,
        "params_m": measure.count_params(model) / 1e6,
        "fused_params_m": measure.count_params(fused) / 1e6,
        "depth": measure.depth(model, input_size),
        "gflops": measure.count_flops(fused, input_size) / 1e9,
        "input_size": "x".join(map(str, input_size)),
    }


def cmd_models(args: argparse.Namespace) -> None:
    rows = [model_summary(name) for name in list_models(args.filter)]
    print(format_table(rows))
    print(f"\n{len(rows)} models; params in millions; GFLOPs of the fused model, one image at input_size.")


def cmd_info(args: argparse.Namespace) -> None:
    kwargs = dict(num_classes=args.num_classes, in_chans=args.in_chans)
    if args.input_size and args.in_chans is None:
        kwargs["in_chans"] = args.input_size[0]
    row = model_summary(args.model, args.input_size, **kwargs)
    if args.latency:
        if args.threads:
            torch.set_num_threads(args.threads)
        model = create_model(args.model, **kwargs)
        timed = reparameterize_model(model) if args.fused else model.eval()
        row["latency_ms_bs1"] = measure.latency(timed, args.input_size or None).median_ms
        row["timed_form"] = "fused" if args.fused else "training (unfused)"
    for key, value in row.items():
        print(f"{key:>16}: {value:.4g}" if isinstance(value, float) else f"{key:>16}: {value}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="table of registered models: params, measured depth, FLOPs")
    p.add_argument("filter", nargs="?", default="", help="shell wildcard, e.g. 'parnet_*'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="params, fused params, measured depth, FLOPs (and latency) of one model")
    p.add_argument("model")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="default: the model's")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--fused", action="store_true", help="time the reparameterised (fused) model")
    p.add_argument("--latency", action="store_true", help="also time one batch-1 forward pass (median)")
    p.add_argument("--threads", type=int, help="torch intra-op threads for timing")
    p.set_defaults(func=cmd_info)
