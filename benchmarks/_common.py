"""Shared by the benchmark scripts: where and on what a number was measured."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys

import torch


def machine() -> dict[str, str | int]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "gpu": gpu or "none", "torch": torch.__version__,
            "python": platform.python_version(), "date": dt.date.today().isoformat(),
            "command": " ".join([os.path.relpath(sys.executable), *sys.argv])}


def header(title: str, meta: dict) -> str:
    """The report's provenance lines; meta's optional `rendered` says when a report was written again from its
    JSON by a later version of the script (the figures are the command's, the layout is not)."""
    rendered = f"- rendered: {meta['rendered']}\n" if meta.get("rendered") else ""
    return (f"# {title}\n\n- command: `{meta['command']}`\n- machine: {meta['cpu']}, {meta['cores']} cores, "
            f"GPU: {meta['gpu']}\n- torch {meta['torch']}, Python {meta['python']}, date {meta['date']}\n"
            f"{rendered}\n")
