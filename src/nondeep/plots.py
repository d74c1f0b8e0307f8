"""Plots written as PNG files (matplotlib, no display needed).

matplotlib is imported on the first plot, not with this module: the CLI imports every command's module to
build its parser, and pyplot would add about a second to every `nondeep` call."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .report import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _subplots(*args: Any, **kwargs: Any) -> tuple["Figure", Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig: "Figure", path: str | Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "",
                         eval_label: str = "eval") -> None:
    """Loss (train, eval) and top-1 accuracy (train, eval) against epoch; eval_label names the eval split."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = _subplots(1, 2, figsize=(10, 4))
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
    fig, ax = _subplots(figsize=(6.5, 4.5))
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


def plot_fronts(points: Sequence[dict[str, Any]], x: str, y: str, yerr: str, group: str, front: str,
                path: str | Path, annotate: str | None = None, title: str = "", xlabel: str | None = None,
                ylabel: str | None = None, legend_title: str = "budget (front joined)", logx: bool = False) -> None:
    """Per `group` (a colour each): its points with vertical error bars, the ones flagged by `front` joined in
    x order (a Pareto front: lower x, higher y; or, every point flagged, a curve); every point labelled with
    `annotate` (e.g. depth)."""
    fig, ax = _subplots(figsize=(8, 5.5))
    for i, name in enumerate(sorted({p[group] for p in points})):
        colour = f"C{i}"
        members = [p for p in points if p[group] == name]
        ax.errorbar([p[x] for p in members], [p[y] for p in members], yerr=[p.get(yerr) or 0.0 for p in members],
                    fmt="o", color=colour, alpha=0.5, capsize=3)
        on = sorted((p for p in members if p[front]), key=lambda p: p[x])
        ax.plot([p[x] for p in on], [p[y] for p in on], "o-", color=colour, label=name)
        for p in members if annotate else []:
            ax.annotate(f"[{p[annotate]}]", (p[x], p[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel or x, ylabel=ylabel or y, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7, title=legend_title)
    save_figure(fig, path)


def plot_errorbars(rows: Sequence[dict[str, Any]], x: str, y: str, yerr: str, path: str | Path, label: str = "model",
                   title: str = "", xlabel: str | None = None, ylabel: str | None = None,
                   logx: bool = False) -> None:
    """One labelled point per row with a vertical error bar (e.g. mean accuracy ± its 95% interval); a row
    without an interval (one seed) gets none. Rows that share an x value (one student by several objectives)
    would print their labels over each other: then each row gets a column of its own, named on the axis."""
    xs = [row[x] for row in rows]
    shared = len(set(xs)) < len(xs)
    fig, ax = _subplots(figsize=(6.5, 4.5 + (1.0 if shared else 0.0)))
    for i, row in enumerate(rows):
        ax.errorbar(i if shared else row[x], row[y], yerr=row.get(yerr) or 0.0, fmt="o", capsize=4)
        if not shared:
            ax.annotate(str(row[label]), (row[x], row[y]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if shared:
        ax.set_xticks(range(len(rows)), [f"{row[label]}\n{x} {row[x]:,}" if isinstance(row[x], int) else
                                         f"{row[label]}\n{x} {row[x]:g}" for row in rows],
                      rotation=35, ha="right", fontsize=7)
        ax.set_xlim(-0.5, len(rows) - 0.5)
    elif logx:
        ax.set_xscale("log")
    ax.set(xlabel="" if shared else xlabel or x, ylabel=ylabel or y, title=title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_curves(curves: dict[str, Sequence[Sequence[float]]], path: str | Path, title: str = "",
                ylabel: str = "validation accuracy (%)") -> None:
    """Per name, the mean of its curves against epoch with a band of ± one standard deviation across them."""
    import numpy as np

    fig, ax = _subplots(figsize=(7, 4.5))
    for name, runs in curves.items():
        length = min(len(r) for r in runs)
        values = np.array([r[:length] for r in runs], dtype=float)
        epochs = np.arange(1, length + 1)
        mean = values.mean(axis=0)
        std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(length)
        ax.plot(epochs, mean, "o-", label=f"{name} (n={len(runs)})")
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
