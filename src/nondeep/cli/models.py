"""`nondeep models` and `nondeep info MODEL`: parameters, measured depth, FLOPs, latency."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import torch

from .. import measure
from ..bench import resolve_device
from ..errors import NondeepError
from ..inference import FORMS, available_forms, optimize
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
    timings = []
    if args.latency:
        if args.threads is not None and args.threads < 1:
            raise NondeepError(f"--threads must be >= 1, got {args.threads}")
        model = create_model(args.model, **kwargs)
        example = torch.randn(1, *(args.input_size or model.pretrained_cfg["input_size"]))
        device = resolve_device(args.device)
        # The compiled forms take minutes to compile on a small CPU: asked for by name (--forms).
        forms = args.forms or available_forms(device, model, compiled=False)
        fast = optimize(model, example, device=device, forms=forms, threads=args.threads, label=args.model)
        row["latency_ms_bs1"] = fast.latency_ms
        row["timed_form"] = f"{fast.runner.label()}, the fastest of {len(fast.timings)} tried"
        row["roof_fraction"] = fast.roof_fraction
        row["machine"] = fast.summary["machine"]
        timings = fast.timings
        fast.close()
    for key, value in row.items():
        print(f"{key:>16}: {value:.4g}" if isinstance(value, float) else f"{key:>16}: {value}")
    if timings:
        print()
        print(format_table([{k: t.get(k) for k in ("form", "precision", "threads", "median_ms", "rel_err", "status")}
                            for t in timings]))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="table of registered models: params, measured depth, FLOPs")
    p.add_argument("filter", nargs="?", default="", help="shell wildcard, e.g. 'parnet_*'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="params, fused params, measured depth, FLOPs (and latency) of one model")
    p.add_argument("model")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="default: the model's")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--fused", action="store_true",
                   help="kept for old commands: --latency always times forms of the fused model")
    p.add_argument("--latency", action="store_true", help="also find the fastest inference form on this device "
                   "(nondeep.inference.optimize) and report its batch-1 latency (median) and every form tried")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N], for --latency")
    p.add_argument("--forms", nargs="+", choices=list(FORMS), metavar="FORM",
                   help=f"the forms --latency tries: {', '.join(FORMS)} (default every form the device and model "
                   "can run except the compiled ones, which take minutes to compile on a small CPU)")
    p.add_argument("--threads", type=int, help="torch intra-op threads for timing")
    p.set_defaults(func=cmd_info)
