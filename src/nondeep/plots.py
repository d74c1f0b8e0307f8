"""Plots written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .report import atomic_write_bytes  # noqa: E402


def save_figure(fig: "plt.Figure", path: str | Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Loss (train, eval) and top-1 accuracy (train, eval) against epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r.get("eval_loss") for r in history], "o-", label="eval")
    ax_loss.set(xlabel="epoch", ylabel="loss")
    ax_acc.plot(epochs, [r["train_top1"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r.get("eval_top1") for r in history], "o-", label="eval")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path)


def plot_scatter(points: Sequence[dict[str, Any]], x: str, y: str, path: str | Path, label: str = "model",
                 title: str = "", xlabel: str | None = None, ylabel: str | None = None,
                 hlines: dict[str, float] | None = None, logx: bool = False) -> None:
    """One labelled point per row (e.g. accuracy vs latency), with optional horizontal reference lines."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row in points:
        ax.scatter(row[x], row[y])
        ax.annotate(str(row[label]), (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for name, value in (hlines or {}).items():
        ax.axhline(value, linestyle="--", color="grey")
        ax.annotate(name, (ax.get_xlim()[0], value), textcoords="offset points", xytext=(4, 3), fontsize=8)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel or x, ylabel=ylabel or y, title=title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
