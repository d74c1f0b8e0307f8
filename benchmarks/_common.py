"""Shared by the benchmark scripts: where and on what a number was measured."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys

import torch

from nondeep.inference.roof import device_info


def machine() -> dict[str, str | int]:
    cpu = device_info("cpu")  # lscpu's model name and SIMD extensions (AVX-512, AMX: what a CPU speed-up rests on)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu["cpu_model"], "cpu_simd": cpu["cpu_simd"], "cores": os.cpu_count() or 0,
            "gpu": gpu or "none", "torch": torch.__version__, "python": platform.python_version(),
            "date": dt.date.today().isoformat(),
            "command": " ".join([os.path.relpath(sys.executable), *sys.argv])}


def header(title: str, meta: dict) -> str:
    """The report's provenance lines; meta's optional `rendered` says when a report was written again from its
    JSON by a later version of the script (the figures are the command's, the layout is not)."""
    rendered = f"- rendered: {meta['rendered']}\n" if meta.get("rendered") else ""
    simd = f" ({meta['cpu_simd']})" if meta.get("cpu_simd") else ""
    return (f"# {title}\n\n- command: `{meta['command']}`\n- machine: {meta['cpu']}{simd}, {meta['cores']} cores, "
            f"GPU: {meta['gpu']}\n- torch {meta['torch']}, Python {meta['python']}, date {meta['date']}\n"
            f"{rendered}\n")
