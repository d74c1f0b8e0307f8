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


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "",
                         eval_label: str = "eval") -> None:
    """Loss (train, eval) and top-1 accuracy (train, eval) against epoch; eval_label names the eval split."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r.get("eval_loss") for r in history], "o-", label=eval_label)
    ax_loss.set(xlabel="epoch", ylabel="loss")
    ax_acc.plot(epochs, [r["train_top1"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r.get("eval_top1") for r in history], "o-", label=eval_label)
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
    if logx:  # before the reference lines' labels, which are placed at the axis' left end
        ax.set_xscale("log")
    for name, value in (hlines or {}).items():
        ax.axhline(value, linestyle="--", color="grey")
        ax.annotate(name, (ax.get_xlim()[0], value), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set(xlabel=xlabel or x, ylabel=ylabel or y, title=title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_front(points: Sequence[dict[str, Any]], x: str, y: str, front: str, path: str | Path, label: str = "model",
               annotate: str | None = None, title: str = "", xlabel: str | None = None,
               ylabel: str | None = None) -> None:
    """All points, the ones flagged by `front` drawn larger and joined (a Pareto front: lower x, higher y);
    each labelled by `label` (front points) and `annotate` (all points, e.g. depth)."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    on = sorted((p for p in points if p[front]), key=lambda p: p[x])
    off = [p for p in points if not p[front]]
    ax.scatter([p[x] for p in off], [p[y] for p in off], color="tab:grey", alpha=0.6, label="dominated")
    ax.plot([p[x] for p in on], [p[y] for p in on], "o-", color="tab:red", label="Pareto front")
    for p in points:
        text = str(p[label]) if p[front] else ""
        if annotate is not None:
            text = f"{text} [{p[annotate]}]" if text else f"[{p[annotate]}]"
        ax.annotate(text, (p[x], p[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel=xlabel or x, ylabel=ylabel or y, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, path)
