"""Training throughput: nondeep's trainer in each of its speed options against itself and against a bare
PyTorch loop on the same model, batch, data and augmentation, alternated round by round in one run so that
machine noise hits every variant alike (issue 14).

    .venv/bin/python benchmarks/bench_train_throughput.py --threads 2 --out docs/results

Each trainer variant trains `--epochs` epochs of `--samples` images; its figure is the last epoch's own
images/s (metrics.csv `train_images_per_sec`: steps, progress bar, metric accumulation, no evaluation), so a
compiled variant's first epoch (compilation) is left out. "default" is the trainer with nothing switched on:
the figure the others are measured against. The bare loop is the same step with nothing around it, in the
variant's precision (a CPU bf16 variant is held against a bf16 bare loop).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from _common import header, machine
from nondeep.data import Augment, build_loaders
from nondeep.models import create_model
from nondeep.report import format_table, write_json, write_text
from nondeep.stats import estimate
from nondeep.train import TrainConfig, train
from nondeep.hardware import native_cpu_bf16

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},  # the trainer's --compile: compile_mode auto, so CUDA graphs on one GPU
    "channels_last+compile": {"channels_last": True, "compile": True},
    "compile-reduce-overhead": {"compile": True, "compile_mode": "reduce-overhead"},  # CUDA graphs, asked by name
    # bf16 autocast on a CPU with native bf16 (AVX512-BF16, AMX); on CUDA the default already steps in bf16
    "bf16": {"cpu_bf16": True},
    "channels_last+bf16": {"channels_last": True, "cpu_bf16": True},
    "compile+bf16": {"compile": True, "cpu_bf16": True},
    "channels_last+compile+bf16": {"channels_last": True, "compile": True, "cpu_bf16": True},
}
TARGET_VS_DEFAULT, FLOOR_VS_BARE_LOOP = 1.3, 0.95  # issue 14, CPU


def bare_loop_of(variant: str) -> str:
    """The bare loop a variant is held against: the one of its precision (a CPU bf16 step against a bf16 loop)."""
    if variant.startswith("bare loop"):
        return variant
    return "bare loop bf16" if VARIANTS.get(variant, {}).get("cpu_bf16") else "bare loop"


def bare_loop_images_per_sec(model_name: str, samples: int, batch_size: int, epochs: int, seed: int,
                             device: torch.device, cpu_bf16: bool = False) -> float:
    """The last epoch's images/s of a plain SGD loop over the trainer's own loader and augmentation, in the
    trainer's precision: bf16 autocast on CUDA, and on the CPU when cpu_bf16."""
    torch.manual_seed(seed)
    loader, _, info = build_loaders("fashion-mnist", batch_size=batch_size, max_train_samples=samples,
                                    augment=Augment(crop_padding=2, flip=True), seed=seed, val_split=0.0,
                                    device=device)
    model = create_model(model_name, num_classes=info.num_classes, in_chans=info.in_chans).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or cpu_bf16)
    rate = 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        seen, start = 0, time.perf_counter()
        for x, y in loader:
            with autocast:
                loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += y.numel()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = seen / (time.perf_counter() - start)
    return rate


def trainer_images_per_sec(model_name: str, samples: int, batch_size: int, epochs: int, seed: int, device: str,
                           options: dict[str, Any]) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(model=model_name, epochs=epochs, batch_size=batch_size, max_train_samples=samples,
                          seed=seed, out=str(Path(out) / "run"), progress=False, lr=0.05, val_split=0.0,
                          device=device, **options)
        train(cfg)
        with open(Path(out) / "run" / "metrics.csv") as f:
            return float(list(csv.DictReader(f))[-1]["train_images_per_sec"])


def round_ratios(rates: dict[str, list[float]], name: str, against: str) -> list[float]:
    """name's images/s over against's, round by round (alternated rounds pair them: both saw that round's machine)."""
    return [a / b for a, b in zip(rates[name], rates[against])]


def speedup_rows(rates: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Per variant: median, min and max images/s over the rounds, and its speed-up over the default and over
    the bare loop as the mean of the round ratios with a 95% Student-t interval (stats.estimate)."""
    rows = []
    for name, values in rates.items():
        row: dict[str, Any] = {"variant": name, "images_per_sec": round(statistics.median(values), 1),
                               "min": round(min(values), 1), "max": round(max(values), 1)}
        for against, column in (("default", "vs_default"), (bare_loop_of(name), "vs_bare_loop")):
            if against in rates:
                ratio = estimate(round_ratios(rates, name, against))
                row[column] = round(float(ratio.mean), 3)
                row[column + "_ci95"] = (None if ratio.low is None else
                                         [round(float(ratio.low), 3), round(float(ratio.high), 3)])
        rows.append(row)
    return rows


def target_verdict(rates: dict[str, list[float]], target: float = TARGET_VS_DEFAULT,
                   floor: float = FLOOR_VS_BARE_LOOP) -> str:
    """The fastest trainer variant against issue 14's CPU targets, decided by the intervals of its round ratios:
    met when both intervals clear their bounds, not met when either lies below, otherwise undecided."""
    if "default" not in rates:
        return "No default variant in this run: no speed-up to state."
    variants = [v for v in rates if v != "default" and not v.startswith("bare loop")] or ["default"]
    best = max(variants, key=lambda v: statistics.median(rates[v]))
    vs_default = estimate(round_ratios(rates, best, "default"))
    vs_bare = estimate(round_ratios(rates, best, bare_loop_of(best)))
    if vs_default.low is None:
        outcome = "one round, no interval: run more rounds"
    elif vs_default.low >= target and vs_bare.low >= floor:
        outcome = "met"
    elif vs_default.high < target or vs_bare.high < floor:
        outcome = "not met"
    else:
        outcome = "undecided: an interval holds its bound (run more rounds)"

    def stated(e: Any) -> str:
        return f"{e.mean:.2f}x" + ("" if e.low is None else f" (95% CI [{e.low:.2f}, {e.high:.2f}])")

    return (f"Fastest trainer variant: {best}, {stated(vs_default)} the default and {stated(vs_bare)} the "
            f"{bare_loop_of(best)} "
            f"over {vs_default.n} rounds (targets: >= {target}x the default, >= {floor}x the bare loop): {outcome}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="parnet_tiny")
    parser.add_argument("--samples", type=int, default=4096, help="training images an epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs a run; the last one is measured")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="default: every variant the device runs (bf16 ones on a CPU with native bf16)")
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1 (3 or more for an interval), got {args.rounds}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16_runs = device.type == "cpu" and native_cpu_bf16()
    variants = args.variants or [v for v in VARIANTS if bf16_runs or not VARIANTS[v].get("cpu_bf16")]
    if not bf16_runs and any(VARIANTS[v].get("cpu_bf16") for v in variants):
        parser.error("the bf16 variants need a CPU with native bf16 (AVX512-BF16 or AMX); on CUDA the default "
                     "steps in bf16 already: drop them")
    bare_loops = list(dict.fromkeys(bare_loop_of(v) for v in ["default", *variants]))
    rates: dict[str, list[float]] = {**{b: [] for b in bare_loops}, **{v: [] for v in variants}}
    meta = {**machine(), "device": str(device), "threads": args.threads, "model": args.model,
            "batch_size": args.batch_size, "samples": args.samples, "epochs": args.epochs, "rounds": 0,
            "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    for r in range(args.rounds):
        for bare in bare_loops:
            rates[bare].append(bare_loop_images_per_sec(args.model, args.samples, args.batch_size, args.epochs, r,
                                                        device, cpu_bf16=bare.endswith("bf16")))
        for name in variants:
            rates[name].append(trainer_images_per_sec(args.model, args.samples, args.batch_size, args.epochs, r,
                                                      args.device, VARIANTS[name]))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()) + " img/s", flush=True)
        meta["rounds"] = r + 1
        verdict = write_report(rates, meta, Path(args.out))  # after every round: a run cut short keeps its rounds
    print(verdict)


def write_report(rates: dict[str, list[float]], meta: dict[str, Any], out: Path) -> str:
    """train_throughput.json (the rates of every round, the rows, the verdict) and its markdown, named
    train_throughput-gpu.* for a GPU run (the CPU's report stays beside it); returns the verdict."""
    rows, verdict = speedup_rows(rates), target_verdict(rates)
    name = "train_throughput-gpu" if meta["device"].startswith("cuda") else "train_throughput"
    write_json(out / f"{name}.json", {"meta": meta, "rows": rows, "rates": rates, "verdict": verdict})
    gpu = f" ({meta['gpu_name']})" if meta["gpu_name"] else ""
    write_text(out / f"{name}.md", header("Training throughput", meta) +
               f"- device {meta['device']}{gpu}, {meta['threads']} threads, {meta['model']}, batch "
               f"{meta['batch_size']}, {meta['samples']} images an epoch, last of {meta['epochs']} epochs measured, "
               f"{meta['rounds']} alternated rounds: images/s is the median of the rounds, a speed-up the mean of "
               f"the round ratios with its 95% Student-t interval\n\n" +
               format_table(rows) + f"\n\n{verdict}\n\n" + __doc__.split("\n\n", 2)[2])
    return verdict

if __name__ == "__main__":
    main()
