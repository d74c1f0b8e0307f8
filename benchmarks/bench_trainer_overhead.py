"""Trainer overhead: images/s of nondeep's training loop against a bare PyTorch loop on the same model, batch
and data (the same in-memory loader and augmentation), alternated A/B/A/B in one run so machine noise hits both.

    .venv/bin/python benchmarks/bench_trainer_overhead.py --out docs/results
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import header, machine
from nondeep.data import Augment, build_loaders
from nondeep.models import create_model
from nondeep.report import format_table, write_json, write_text
from nondeep.train import TrainConfig, train


def bare_loop_images_per_sec(model_name: str, samples: int, batch_size: int, seed: int) -> float:
    torch.manual_seed(seed)
    loader, _, info = build_loaders("fashion-mnist", batch_size=batch_size, max_train_samples=samples,
                                    augment=Augment(crop_padding=2, flip=True), seed=seed)
    model = create_model(model_name, num_classes=info.num_classes, in_chans=info.in_chans).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader.set_epoch(0)
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += y.numel()
    return seen / (time.perf_counter() - start)


def nondeep_images_per_sec(model_name: str, samples: int, batch_size: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(model=model_name, epochs=1, batch_size=batch_size, max_train_samples=samples, seed=seed,
                          out=str(Path(out) / "run"), progress=True, lr=0.05)
        train(cfg)
        with open(Path(out) / "run" / "metrics.csv") as f:
            return float(next(csv.DictReader(f))["train_images_per_sec"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="parnet_tiny")
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bare, ours = [], []
    for r in range(args.rounds):
        bare.append(bare_loop_images_per_sec(args.model, args.samples, args.batch_size, r))
        ours.append(nondeep_images_per_sec(args.model, args.samples, args.batch_size, r))
        print(f"round {r + 1}: bare {bare[-1]:.1f} img/s, nondeep {ours[-1]:.1f} img/s")
    meta = machine()
    row = {"model": args.model, "batch_size": args.batch_size, "samples_per_round": args.samples,
           "rounds": args.rounds, "threads": args.threads,
           "bare_images_per_sec": statistics.median(bare), "nondeep_images_per_sec": statistics.median(ours),
           "ratio": statistics.median(ours) / statistics.median(bare), "target_ratio": 0.95}
    write_json(Path(args.out) / "trainer_overhead.json", {"meta": meta, "result": row, "bare": bare, "nondeep": ours})
    write_text(Path(args.out) / "trainer_overhead.md", header("Trainer overhead", meta) + format_table([row]) +
               "\n\nnondeep's images/s is the training epoch's own figure (metrics.csv `train_images_per_sec`: "
               "steps, progress bar, metric accumulation, no evaluation).\n")
    print(format_table([row]))


if __name__ == "__main__":
    main()
