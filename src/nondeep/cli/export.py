"""`nondeep export MODEL_OR_CHECKPOINT --format onnx`: the fused model to ONNX, checked and timed in ONNX Runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..export import export_onnx, load_model_or_checkpoint
from ..inference import available_forms, optimize

FORMATS = ("onnx",)


def default_out(model_or_checkpoint: str, fmt: str) -> Path:
    """`parnet_s.onnx` for a model name (`torchvision_resnet50.onnx` for torchvision:resnet50), and the
    checkpoint's own name with the format's suffix beside it for a checkpoint."""
    path = Path(model_or_checkpoint)
    if path.is_file():
        return path.with_suffix(f".{fmt}")
    return Path(f"{model_or_checkpoint.replace(':', '_').replace('/', '_')}.{fmt}")


def cmd_export(args: argparse.Namespace) -> None:
    out = Path(args.out) if args.out else default_out(args.model, args.format)
    model_kwargs = {"num_classes": args.num_classes}
    if args.input_size and not Path(args.model).is_file():
        model_kwargs["in_chans"] = args.input_size[0]
    result = export_onnx(args.model, out, input_size=args.input_size, opset=args.opset,
                         dynamic_batch=args.dynamic_batch, check=not args.no_check, threads=args.threads,
                         repeats=args.repeats, model_kwargs=model_kwargs)
    batch = "dynamic batch" if result["dynamic_batch"] else "batch 1"
    print(f"wrote {result['path']} ({result['file_mb']:.1f} MB, opset {result['opset']}, {batch}, input "
          f"{'x'.join(map(str, result['input_size']))}): fused {result['model']}, "
          f"{result['fused_params_m']:.2f} M params")
    if "max_abs_err" in result:
        print(f"ONNX Runtime vs PyTorch: max abs error {result['max_abs_err']:.2e} (< {result['tolerance']:g}; "
              f"outputs up to {result['max_abs_output']:.3g}) on batch "
              f"{', '.join(map(str, result['checked_batch_sizes']))}")
        print(f"batch-1 latency, median of {result['latency_repeats']}, {result['threads']} thread(s): PyTorch "
              f"{result['torch_latency_ms']:.2f} ms, ONNX Runtime {result['ort_latency_ms']:.2f} ms")
    if args.compare_forms:  # is the ONNX file this machine's fastest form? nondeep.inference.optimize measures
        model, _ = load_model_or_checkpoint(args.model, **model_kwargs)
        cpu = torch.device("cpu")
        fast = optimize(model, torch.randn(1, *result["input_size"]), device=cpu, threads=args.threads,
                        forms=available_forms(cpu, model, compiled=False), repeats=args.repeats, label=result["model"])
        print(f"fastest form on this CPU (nondeep.inference.optimize, {len(fast.timings)} tried): "
              f"{fast.runner.label()}, {fast.latency_ms:.2f} ms at batch 1")
        fast.close()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the fused (reparameterised) model to ONNX, check it against PyTorch "
                       "in ONNX Runtime and time both")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT",
                   help="a model name (parnet_s, torchvision:resnet50, ...) or a checkpoint file")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension (default: batch 1)")
    p.add_argument("--out", help="output file (default: MODEL.onnx here, or beside the checkpoint)")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="default: the model's")
    p.add_argument("--num-classes", type=int, help="for a model name: the classifier's classes")
    p.add_argument("--threads", type=int, help="threads for PyTorch and ONNX Runtime when timing")
    p.add_argument("--repeats", type=int, default=30, help="timed calls for the latency medians")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison and timing")
    p.add_argument("--compare-forms", action="store_true",
                   help="also time every CPU inference form (nondeep.inference.optimize, compiled ones left out) "
                   "and name the fastest, so you see whether ONNX Runtime is it on this machine")
    p.set_defaults(func=cmd_export)
