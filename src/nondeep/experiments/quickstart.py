"""The main job on the embedded default: train a depth-12 ParNet and a deep thin pre-act ResNet on
Fashion-MNIST, then put accuracy, measured depth, size, FLOPs and fused/unfused latency side by side."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shlex
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..bench import module_candidate, time_candidates
from ..checkpoint import load_model
from ..plots import plot_scatter
from ..report import format_table, write_json, write_text
from ..reparam import reparameterize_model
from ..train import TrainConfig, train
from ._lab import describe_machine, finished, machine

QUICKSTART_MODELS = ("parnet_tiny", "preact_resnet_20")


def run_quickstart(out: str | Path | None = None, models: Sequence[str] = QUICKSTART_MODELS, epochs: int = 1,
                   data: str = "fashion-mnist", data_dir: str | None = None, max_train_samples: int | None = None,
                   seed: int = 0, progress: bool = True, command: Sequence[str] = ("nondeep", "quickstart")
                   ) -> tuple[list[dict[str, Any]], Path]:
    """Train each model with the same recipe, measure it, and write quickstart.json/.md/.png under `out`.
    Returns the table's rows and the output folder."""
    out, started = Path(out or Path("runs") / f"quickstart-{dt.datetime.now():%Y%m%d-%H%M%S}"), time.perf_counter()
    rows, candidates = [], []
    for name in models:
        cfg = TrainConfig(model=name, data=data, data_dir=data_dir, out=str(out / name), epochs=epochs, seed=seed,
                          max_train_samples=max_train_samples, progress=progress)
        summary = finished(train(cfg))  # a run stopped by Ctrl-C ends the quickstart, not just that run
        model, meta = load_model(summary["checkpoint"])
        input_size = (meta["data"]["in_chans"], *meta["data"]["image_size"])
        candidates += [module_candidate(model.eval(), name, "unfused", input_size),
                       module_candidate(reparameterize_model(model), name, "fused", input_size)]
        rows.append({
            "model": name, "test_accuracy": summary["test_accuracy"],
            "fused_test_accuracy": summary["fused_test_accuracy"], "depth": summary["depth"],
            "params_m": summary["params"] / 1e6, "mflops": summary["flops"] / 1e6, "epochs": summary["epochs"],
            "train_seconds": summary["train_seconds"],
        })
    # All models' batch-1 latencies in one interleaved timing, so that machine noise weighs on each alike.
    timed = {(r["model"], r["form"]): r["infer_step_time"] for r in time_candidates(candidates, batch_size=1)}
    for row in rows:
        row["latency_ms_bs1"] = timed[(row["model"], "unfused")]
        row["fused_latency_ms_bs1"] = timed[(row["model"], "fused")]
    meta = {"command": shlex.join(command), "data": data, "epochs": epochs, "seed": seed,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "date": dt.date.today().isoformat(),
            "total_seconds": round(time.perf_counter() - started, 1),
            "machine": machine(),  # CPU model and SIMD, GPU, load: the latencies and train times depend on them
            "recipe": {k: v for k, v in dataclasses.asdict(TrainConfig()).items()
                       if k in ("batch_size", "lr", "schedule", "label_smoothing", "weight_decay", "crop_padding")}}
    write_json(out / "quickstart.json", {"meta": meta, "rows": rows})
    table = format_table(rows)
    write_text(out / "quickstart.md",
               f"# nondeep quickstart ({meta['date']}, torch {meta['torch']}, {meta['threads']} threads)\n\n"
               f"- command: `{meta['command']}` (seed {seed}); took {meta['total_seconds'] / 60:.1f} min\n"
               f"- machine: {describe_machine(meta['machine'])}\n\n{table}\n")
    plot_scatter(rows, "fused_latency_ms_bs1", "test_accuracy", out / "quickstart.png",
                 title=f"{data}: accuracy vs fused batch-1 latency", xlabel="fused batch-1 latency (ms)",
                 ylabel="test accuracy (%)")
    return rows, out
