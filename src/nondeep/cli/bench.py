"""`nondeep bench MODEL [MODEL ...]`: latency, throughput and roof fraction of every inference form, side by side."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from ..bench import (DEFAULT_REPEATS, DEFAULT_WARMUP, TABLE_COLUMNS, build_model, check_row, check_timing,
                     prepare_model, refresh_roof, resolve_device, time_models)
from ..errors import NondeepError
from ..inference import (FORMS, PRECISIONS, check_form, device_info, machine_line, measure_roof, requested_pairs,
                         resolve_precision)
from ..parallel import NotStreamParallelError, is_stream_parallel_capable
from ..report import format_table, write_json, write_text


def load_accuracies(paths: Sequence[str]) -> dict[str, float]:
    """model -> test_accuracy from JSON files (a training run's summary.json; a list of such dicts also works)."""
    accuracies: dict[str, float] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as err:
            raise NondeepError(f"cannot read accuracy file {path}: {err.strerror or err}") from err
        except json.JSONDecodeError as err:
            raise NondeepError(f"accuracy file {path} is not JSON: {err}") from err
        for entry in data if isinstance(data, list) else [data]:
            if not isinstance(entry, dict) or "model" not in entry or "test_accuracy" not in entry:
                raise NondeepError(f"accuracy file {path} needs the keys 'model' and 'test_accuracy'")
            accuracies[str(entry["model"])] = float(entry["test_accuracy"])
    return accuracies


def plot_latency_vs_accuracy(rows: Sequence[dict[str, Any]], accuracies: dict[str, float], path: str | Path,
                             title: str = "") -> int:
    """One point per (model, form) at the smallest batch size: latency (ms) against test accuracy. Returns
    the number of points (models without an accuracy are left out)."""
    from ..plots import plot_scatter  # matplotlib (Agg) only when a plot is asked for

    smallest = min(r["infer_batch_size"] for r in rows)
    points = [{"label": f"{r['model']} ({r['form']})", "latency_ms": r["infer_step_time"],
               "test_accuracy": accuracies[r["model"]]}
              for r in rows if r["infer_batch_size"] == smallest and r["model"] in accuracies]
    if points:
        plot_scatter(points, "latency_ms", "test_accuracy", path, label="label", title=title,
                     xlabel=f"latency at batch {smallest} (ms)", ylabel="test accuracy", logx=True)
    return len(points)


def requested_forms(args: argparse.Namespace) -> list[str]:
    return list(dict.fromkeys([*(args.forms or []), *(["compiled"] if args.compile else []),
                               *(["streams"] if args.stream_parallel else [])]))


def check_request(forms: Sequence[str], precisions: Sequence[str], device: torch.device,
                  models: Sequence[torch.nn.Module]) -> None:
    """Bad requests fail before any timing: a form the device cannot run, a precision the CPU lacks, streams
    asked for when no model has any (a model without streams among ParNets is skipped, logged)."""
    probe = next((m for m in models if is_stream_parallel_capable(m)), models[0])
    for form, precision in requested_pairs(list(forms), list(precisions)):
        try:
            check_form(form, device, probe, precision)
        except NotStreamParallelError as err:
            raise NotStreamParallelError(f"--forms {form}: none of the models has parallel streams "
                                         f"({err})") from err


def cmd_bench(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise NondeepError(f"--threads must be >= 1, got {args.threads}")
    check_timing(args.batch_sizes, args.repeats, args.warmup)
    accuracies = load_accuracies(args.accuracy) if args.accuracy else {}
    # Build every model first: a wrong name fails in a second, not after minutes of timing.
    models = [build_model(name, args.input_size, args.in_chans)[0] for name in args.models]
    device = resolve_device(args.device)
    forms = requested_forms(args)
    precisions = list(dict.fromkeys(resolve_precision(p) for p in args.dtype))
    check_request(forms, precisions, device, models)
    threads = args.threads or torch.get_num_threads()
    # One roof for every model of the run: the highest rate measured, on the same threads and device.
    roof = measure_roof(device, tuple(precisions), threads, onnxruntime="onnxruntime" in forms)
    failures: list[dict[str, Any]] = []
    # Every form of every model in the same interleaved rounds: the models are compared side by side.
    prepared = [prepare_model(model, args.input_size, threads, device, not args.fused_only, args.channels_last,
                              forms=forms, precisions=precisions, model_name=name, failures=failures)
                for name, model in zip(args.models, models)]
    rows = time_models(prepared, args.batch_sizes, threads, device, args.repeats, args.warmup, roof=roof)
    # Measured again after the timing: the roof is the highest rate seen on the device in the run.
    roof = roof.merge(measure_roof(device, tuple(precisions), threads, onnxruntime="onnxruntime" in forms))
    refresh_roof(rows, roof)
    for row in rows:
        try:
            check_row(row)
        except ValueError as err:  # a roof fraction above 1: nothing is written
            raise NondeepError(f"{err}; load average {os.getloadavg()[0]:.1f}: if other processes disturbed the "
                               f"roof measurement, re-run on a quieter machine, else report it") from err
        if row["model"] in accuracies:
            row["test_accuracy"] = accuracies[row["model"]]
    columns = TABLE_COLUMNS + (["rel_err"] if forms else []) + (["test_accuracy"] if accuracies else [])
    table = format_table(rows, columns)
    info = device_info(device)
    rates = ", ".join(f"{c.kernel} {c.precision} {c.backend} {c.gflops:.0f}" for c in roof.components)
    note = (f"{machine_line(info)}; {threads} threads, device {device}; load average (1 min) "
            f"{min(r['loadavg_before'] for r in rows):.2f}-{max(r['loadavg_after'] for r in rows):.2f}; "
            f"roof = the highest rate measured in the form's precision or a more precise one (GFLOP/s: {rates}); "
            f"infer_step_time in ms per batch (median, p10, p90 of {args.repeats}); param_count in millions; "
            f"infer_gmacs per sample.")
    print(table)
    print(f"\n{note}")
    for failure in failures:
        print(f"not timed: {failure['model']} {failure['form']} ({failure['precision']}): {failure['error']}",
              file=sys.stderr)
    if args.json:
        write_json(args.json, rows)
    if args.md:
        command = (" ".join(["nondeep", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"]
                   else f"nondeep bench {' '.join(args.models)} (called from Python)")
        write_text(args.md, f"# nondeep bench\n\n- command: `{command}`\n- date: {rows[0]['date']}\n- {note}\n\n"
                            f"{table}\n")
    if accuracies:
        plot = args.plot or _default_plot_path(args)
        if plot_latency_vs_accuracy(rows, accuracies, plot, title="latency vs accuracy"):
            print(f"latency-vs-accuracy plot: {plot}")
        else:
            print("no benchmarked model has an accuracy in the --accuracy files: no plot", file=sys.stderr)
    return 0


def _default_plot_path(args: argparse.Namespace) -> Path:
    for given in (args.md, args.json):
        if given:
            return Path(given).with_name(Path(given).stem + "_latency_vs_accuracy.png")
    return Path("bench_latency_vs_accuracy.png")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency, throughput and roof fraction of inference forms, side by side",
                       description="Time inference of each model (fused and unfused, and the forms of "
                       "nondeep.inference: compiled, onnxruntime, streams, CUDA graphs, ...) at each batch size, "
                       "every form of every model in the same interleaved rounds; print a markdown table.")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="registered names (nondeep models), or torchvision:NAME where supported")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's current count)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], metavar="N", help="default: 1 32")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="default: each model's")
    p.add_argument("--in-chans", type=int, help="input channels (default: the input size's C, else the model's)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for models and inputs")
    p.add_argument("--forms", nargs="+", choices=list(FORMS), metavar="FORM",
                   help=f"also time these forms of the fused model: {', '.join(FORMS)} (graph, streams_graph, "
                   "compiled_graph need --device cuda; streams forms need a ParNet)")
    p.add_argument("--dtype", nargs="+", default=["float32"], metavar="PRECISION",
                   help=f"precisions of the --forms rows: {', '.join(PRECISIONS)} (all but float32 need a GPU; "
                   "default float32)")
    p.add_argument("--compile", action="store_true", help="same as --forms compiled")
    p.add_argument("--stream-parallel", action="store_true", help="same as --forms streams")
    p.add_argument("--fused-only", action="store_true", help="skip the unfused (training-form) rows")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help=f"timed calls per row (default {DEFAULT_REPEATS})")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed calls first (default {DEFAULT_WARMUP})")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON (atomically)")
    p.add_argument("--md", metavar="PATH", help="write the table as markdown (atomically)")
    p.add_argument("--accuracy", nargs="+", metavar="SUMMARY_JSON",
                   help="JSON files with 'model' and 'test_accuracy' (e.g. training summary.json): adds a "
                   "latency-vs-accuracy PNG")
    p.add_argument("--plot", metavar="PATH", help="where the latency-vs-accuracy PNG goes (default: beside --md "
                   "or --json, else ./bench_latency_vs_accuracy.png)")
    p.set_defaults(func=cmd_bench)
