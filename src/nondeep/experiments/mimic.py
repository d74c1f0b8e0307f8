"""`nondeep lab mimic`: Ba & Caruana's experiment on Fashion-MNIST. A deep thin teacher is trained (or
given); the shallow students are trained (a) on the labels and (b) on the teacher's logits (mimic L2),
and a non-deep ParNet student by mimicry; the table, JSON and plot report how much of the teacher's lead
each student closes, and whether the issue's targets are met.

A controlled comparison: the label-trained twin is trained on the same transfer set (originals + K fixed
augmented copies), with the same recipe, epochs and seed; only the targets differ (labels: `distill` with
alpha = 0, the teacher's logits: alpha = 1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import time
from pathlib import Path
from typing import Any, Sequence

from .. import measure
from ..checkpoint import load_model
from ..distill import distill
from ..plots import plot_scatter
from ..report import format_table, write_json, write_text
from ..train import TrainConfig, config_from_dict, train
from ._lab import describe_machine, finished, machine

# The shallow students' recipe; configs/mimic_snn.yaml holds the same (a test keeps them equal). AdamW with
# a small lr: the 8000-unit layer fed by a linear bottleneck is unstable under the conv nets' SGD lr 0.2.
MIMIC_RECIPE: dict[str, Any] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-4, "schedule": "cosine",
                                "warmup_epochs": 0.0, "label_smoothing": 0.0, "batch_size": 128}
SHALLOW_STUDENTS = ("mimic_snn_8k", "mimic_cnn_8k")
NONDEEP_STUDENTS = ("parnet_tiny",)
TARGETS = {"mimic_gain_points": 1.0, "gap_closed": 0.5, "nondeep_within_points": 0.5}


def recipe_for(model: str) -> dict[str, Any]:
    """The Ba & Caruana students get MIMIC_RECIPE; every other model nondeep's default (SGD one-cycle)."""
    return dict(MIMIC_RECIPE) if model.startswith("mimic_") else {}


def _gap_closed(label: float | None, mimic: float, teacher: float) -> float | None:
    if label is None or teacher - label <= 0:
        return None  # no gap to close: the label-trained student already matches the teacher
    return (mimic - label) / (teacher - label)


def run_mimic_lab(out: str | Path | None = None, teacher: str | None = None, teacher_model: str = "preact_resnet_20",
                  teacher_epochs: int = 5, students: Sequence[str] = SHALLOW_STUDENTS, student_epochs: int = 2,
                  nondeep_students: Sequence[str] = NONDEEP_STUDENTS, nondeep_epochs: int = 2,
                  nondeep_label_baseline: bool = False, transfer_copies: int = 0, loss: str = "mimic",
                  data: str = "fashion-mnist", data_dir: str | None = None, max_train_samples: int | None = None,
                  seed: int = 0, crop_padding: int = 2, flip: bool = True, cache_dir: str | None = None,
                  model_kwargs: dict[str, dict[str, Any]] | None = None, results: str | Path | None = None,
                  command: str = "nondeep lab mimic", progress: bool = True,
                  threads: int | None = None) -> tuple[dict[str, Any], Path]:
    """Run the lab; write mimic.json/.md/.png under `out` (and copies under `results`). Returns (report, out)."""
    out = Path(out or Path("runs") / f"lab-mimic-{dt.datetime.now():%Y%m%d-%H%M%S}")
    start = time.perf_counter()
    kwargs = model_kwargs or {}
    common = dict(data=data, data_dir=data_dir, max_train_samples=max_train_samples, seed=seed, progress=progress,
                  crop_padding=crop_padding, flip=flip, threads=threads)

    def cfg(model: str, run: str, epochs: int) -> TrainConfig:
        return config_from_dict({**common, **recipe_for(model), "model": model, "out": str(out / run),
                                 "epochs": epochs, "model_kwargs": kwargs.get(model, {})})

    if teacher is None:
        teacher_summary = finished(train(cfg(teacher_model, f"teacher-{teacher_model}", teacher_epochs)))
        teacher = teacher_summary["checkpoint"]
    teacher_row = describe_teacher(teacher)
    rows: list[dict[str, Any]] = []
    plan = [(s, True) for s in students] + [(s, nondeep_label_baseline) for s in nondeep_students]
    for model, with_labels in plan:
        epochs = student_epochs if model in students else nondeep_epochs
        mimic = finished(distill(cfg(model, f"{model}-{loss}", epochs), [teacher], loss=loss,
                                  transfer_copies=transfer_copies, cache_dir=cache_dir))
        label = finished(distill(cfg(model, f"{model}-labels", epochs), [teacher], alpha=0.0,
                                  transfer_copies=transfer_copies, cache_dir=cache_dir)) if with_labels else None
        teacher_acc = teacher_row["test_accuracy"] = mimic["teacher_test_accuracy"]
        rows.append({
            "model": model, "kind": "shallow" if model in students else "non-deep", "params": mimic["params"],
            "depth": mimic["depth"], "label_acc": label["test_accuracy"] if label else None,
            "mimic_acc": mimic["test_accuracy"], "teacher_acc": teacher_acc,
            "gap_closed": _gap_closed(label["test_accuracy"] if label else None, mimic["test_accuracy"], teacher_acc),
            "teacher_agreement": mimic["teacher_agreement"],
            "label_teacher_agreement": label["teacher_agreement"] if label else None,
            "cache": mimic["distill"]["cache"], "epochs": mimic["epochs"],
            "train_seconds": mimic["train_seconds"] + (label["train_seconds"] if label else 0.0),
        })
    report = {"meta": {"command": command, "data": data, "max_train_samples": max_train_samples, "seed": seed,
                       "loss": loss, "transfer_copies": transfer_copies, "teacher_epochs": teacher_epochs,
                       "student_epochs": student_epochs, "nondeep_epochs": nondeep_epochs,
                       "recipes": {"shallow": MIMIC_RECIPE, "other": "TrainConfig defaults"},
                       "machine": machine(), "date": dt.datetime.now().isoformat(timespec="seconds"),
                       "total_seconds": time.perf_counter() - start},
              "teacher": teacher_row, "rows": rows, "targets": check_targets(rows)}
    write_outputs(report, out)
    if results:
        write_outputs(report, Path(results))
    return report, out


def describe_teacher(path: str) -> dict[str, Any]:
    """The teacher's name, measured size and depth (whether the lab trained it or was given it)."""
    model, meta = load_model(path)
    data = meta["data"]
    return {"model": meta["model"], "checkpoint": str(path), "epochs": meta.get("epoch"),
            "params": measure.count_params(model),
            "depth": measure.depth(model, (data["in_chans"], *data["image_size"])), "test_accuracy": None}


def check_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each computed and marked met / not met, whatever the numbers are."""
    checks = []
    for r in rows:
        if r["kind"] == "shallow" and r["label_acc"] is not None:
            gain = r["mimic_acc"] - r["label_acc"]
            checks.append({"target": f"{r['model']}: mimic beats label-trained by >= {TARGETS['mimic_gain_points']} point",
                           "value": round(gain, 2), "met": gain >= TARGETS["mimic_gain_points"]})
            closed = r["gap_closed"]
            checks.append({"target": f"{r['model']}: mimic closes >= {TARGETS['gap_closed']:.0%} of the gap to the teacher",
                           "value": None if closed is None else round(closed, 3),
                           "met": closed is not None and closed >= TARGETS["gap_closed"]})
        elif r["kind"] == "non-deep":
            short = r["teacher_acc"] - r["mimic_acc"]
            checks.append({"target": f"{r['model']}: mimic within {TARGETS['nondeep_within_points']} point of the teacher",
                           "value": round(-short, 2), "met": short <= TARGETS["nondeep_within_points"]})
    return checks


def _target_line(t: dict[str, Any]) -> str:
    value = "n/a: the label-trained student is not below the teacher" if t["value"] is None else t["value"]
    return f"{'MET' if t['met'] else 'NOT MET'}: {t['target']} (value: {value})"


def write_outputs(report: dict[str, Any], folder: Path) -> None:
    meta, rows, teacher = report["meta"], report["rows"], report["teacher"]
    write_json(folder / "mimic.json", report)
    columns = ["model", "kind", "params", "depth", "label_acc", "mimic_acc", "teacher_acc", "gap_closed",
               "teacher_agreement", "label_teacher_agreement", "epochs"]
    targets = "\n".join(f"- {_target_line(t)}" for t in report["targets"])
    text = (f"# Mimic learning on {meta['data']} (nondeep lab mimic)\n\n"
            f"Command: `{meta['command']}`\n\nSeed {meta['seed']}; {meta['date']}; machine: "
            f"{describe_machine(meta['machine'])}; total {meta['total_seconds'] / 60:.1f} min ({meta['total_seconds']:.0f} s).\n\n"
            f"Teacher: {teacher['model']} (depth {teacher['depth']}, {teacher['params']} parameters, "
            f"{teacher['epochs']} epochs), test accuracy {teacher['test_accuracy'] or float('nan'):.2f}%. Training images: "
            f"{meta['max_train_samples'] or 'all'}; transfer set = originals + {meta['transfer_copies']} fixed "
            f"augmented copies; loss {meta['loss']}. Each student is trained twice on that same transfer set with the "
            f"same recipe and steps: on the labels (label_acc) and on the teacher's logits (mimic_acc).\n\n"
            f"{format_table(rows, columns)}\n\ngap_closed = (mimic_acc - label_acc) / (teacher_acc - label_acc); "
            f"accuracies in % on the test split.\n\n## Targets\n\n{targets}\n")
    write_text(folder / "mimic.md", text)
    points = [{"label": f"{r['model']} (labels)", "params": r["params"], "acc": r["label_acc"]}
              for r in rows if r["label_acc"] is not None]
    points += [{"label": f"{r['model']} ({meta['loss']})", "params": r["params"], "acc": r["mimic_acc"]} for r in rows]
    plot_scatter(points, "params", "acc", folder / "mimic.png", label="label",
                 title=f"{meta['data']}: students vs the teacher", xlabel="parameters", ylabel="test accuracy (%)",
                 hlines={f"teacher {teacher['model']}": teacher["test_accuracy"]} if teacher["test_accuracy"] else None,
                 logx=True)


def cmd_mimic(args: argparse.Namespace) -> None:
    epochs = {k: (args.epochs or getattr(args, k)) for k in ("teacher_epochs", "student_epochs", "nondeep_epochs")}
    parts = ["nondeep", "lab", "mimic", *(["--teacher", args.teacher] if args.teacher else
                                          ["--teacher-model", args.teacher_model]),
             *([] if args.teacher else ["--teacher-epochs", str(epochs["teacher_epochs"])]), "--students", *args.students,
             "--student-epochs", str(epochs["student_epochs"]), "--nondeep-students", *args.nondeep_students,
             "--nondeep-epochs", str(epochs["nondeep_epochs"]), "--transfer-copies", str(args.transfer_copies),
             "--loss", args.loss, "--max-train-samples", str(args.max_train_samples), "--seed", str(args.seed),
             "--crop-padding", str(args.crop_padding), "--flip" if args.flip else "--no-flip"]
    parts += ["--nondeep-label-baseline"] if args.nondeep_label_baseline else []
    parts += ["--threads", str(args.threads)] if args.threads else []
    parts += ["--data-dir", args.data_dir] if args.data_dir else []
    parts += ["--results", args.results] if args.results else []
    report, out = run_mimic_lab(
        out=args.out, teacher=args.teacher, teacher_model=args.teacher_model, students=args.students,
        nondeep_students=args.nondeep_students, nondeep_label_baseline=args.nondeep_label_baseline,
        transfer_copies=args.transfer_copies, loss=args.loss, data_dir=args.data_dir,
        max_train_samples=args.max_train_samples or None, seed=args.seed, crop_padding=args.crop_padding,
        flip=args.flip, cache_dir=args.cache_dir, model_kwargs=args.model_kwargs, results=args.results,
        command=shlex.join(parts), progress=args.progress, threads=args.threads, **epochs)
    print(format_table(report["rows"], ["model", "params", "depth", "label_acc", "mimic_acc", "teacher_acc",
                                        "gap_closed", "teacher_agreement"]))
    print(f"teacher {report['teacher']['model']}: {report['teacher']['test_accuracy']:.2f}%")
    for t in report["targets"]:
        print(_target_line(t))
    print(f"\nwritten under {out}: mimic.json, mimic.md, mimic.png, one run folder per model"
          + (f"; copied to {args.results}" if args.results else ""))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mimic", help="Ba & Caruana: shallow and non-deep students trained on labels vs on a deep "
                       "teacher's logits (default budget: ~30 min on 2 CPU cores)")
    p.add_argument("--teacher", metavar="CKPT", help="use this teacher checkpoint instead of training one")
    p.add_argument("--teacher-model", default="preact_resnet_20", help="deep teacher to train (default: %(default)s)")
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--students", nargs="+", default=list(SHALLOW_STUDENTS), help="shallow students (labels and mimic)")
    p.add_argument("--student-epochs", type=int, default=2, help="epochs over the transfer set (both twins)")
    p.add_argument("--nondeep-students", nargs="*", default=list(NONDEEP_STUDENTS), help="non-deep students (mimic)")
    p.add_argument("--nondeep-epochs", type=int, default=2)
    p.add_argument("--nondeep-label-baseline", action="store_true", help="also train the non-deep students on labels")
    p.add_argument("--epochs", type=int, help="set teacher, student and non-deep epochs at once (smoke runs)")
    p.add_argument("--transfer-copies", type=int, default=0, help="fixed augmented copies in the transfer set")
    p.add_argument("--loss", choices=("mimic", "kd"), default="mimic")
    p.add_argument("--max-train-samples", type=int, default=0,
                   help="first N training images, for the teacher and the students (default 0: all)")
    p.add_argument("--crop-padding", type=int, default=2)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir", help="teacher-logit cache (default: the user cache)")
    p.add_argument("--model-kwargs", type=json.loads, default=None,
                   help='JSON {model: {kwarg: value}}, e.g. \'{"parnet_tiny": {"width_multiplier": 0.5}}\'')
    p.add_argument("--out", help="output folder (default runs/lab-mimic-<date>)")
    p.add_argument("--results", help="also copy mimic.json/.md/.png here (e.g. docs/results)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=cmd_mimic)
