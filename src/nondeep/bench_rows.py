"""The rows of nondeep.bench: their fields and types (the JSON schema tests and tables rely on), the check that
a row follows it and that its roof is a roof, the roof set again after a run, and the speedup of one form over
another."""

from __future__ import annotations

import math
from typing import Any, Sequence

from .inference.roof import Roof

# The fields of every row and their types (the JSON schema that tests and downstream tables rely on).
ROW_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": str, "form": str, "param_count": float, "depth": (int, type(None)), "infer_batch_size": int,
    "infer_img_size": int, "input_size": list, "infer_gmacs": float, "infer_step_time": float,
    "infer_step_time_p10": float, "infer_step_time_p90": float, "infer_samples_per_sec": float,
    "achieved_gflops": float, "roof_gflops": float, "roof_fraction": float, "roof_components": dict,
    "precision": str, "channels_last": bool, "compile_time_s": (float, type(None)), "stream_mode": (str, type(None)),
    "threads": int, "section": str, "device": str, "machine": str, "cpu_simd": str, "repeats": int, "warmup": int,
    "background_cpu": (float, type(None)), "loadavg_before": float, "loadavg_after": float, "torch_version": str,
    "date": str,
}

TABLE_COLUMNS = ["model", "form", "precision", "threads", "infer_batch_size", "infer_step_time", "infer_step_time_p10", "infer_step_time_p90",
                 "infer_samples_per_sec", "param_count", "infer_gmacs", "depth", "achieved_gflops", "roof_fraction"]



def refresh_roof(rows: Sequence[dict[str, Any]], roof: Roof) -> None:
    """Set each row's roof fields from `roof` (e.g. a run's roof merged with one measured after the run)."""
    for row in rows:
        if row["roof_components"] and all(k.startswith("given") for k in row["roof_components"]):
            continue  # a roof the caller gave stays
        row["roof_gflops"] = roof.gflops(row["precision"])
        row["roof_components"] = roof.components_for(row["precision"])
        row["roof_fraction"] = row["achieved_gflops"] / row["roof_gflops"]


def check_row(row: dict[str, Any]) -> None:
    """Raise ValueError if a row lacks a field of ROW_FIELDS or has the wrong type (the JSON schema)."""
    for key, kind in ROW_FIELDS.items():
        if key not in row:
            raise ValueError(f"benchmark row lacks {key!r}")
        value = row[key]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ValueError(f"benchmark row field {key!r} is {type(value).__name__}, expected {kind}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"benchmark row field {key!r} is {value}")
    above = {k: v for k, v in row["roof_components"].items() if v > row["roof_gflops"] * (1 + 1e-9)}
    if above:
        raise ValueError(f"roof {row['roof_gflops']:.1f} GFLOP/s is below measured rates {above}: a roof must be "
                         f"the highest rate measured (a bug)")
    if row["roof_fraction"] > 1.0:
        raise ValueError(f"{row['model']} {row['form']}: roof fraction {row['roof_fraction']:.3f} > 1, so the roof "
                         f"({row['roof_gflops']:.1f} GFLOP/s) is not the highest rate the device reaches: a bug")


def speedup(rows: Sequence[dict[str, Any]], slow: str, fast: str, batch_size: int = 1,
            model: str | None = None) -> float | None:
    """Median step time of form `slow` over that of form `fast` (None if either is missing)."""
    def pick(form: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["form"] == form and r["infer_batch_size"] == batch_size
                     and (model is None or r["model"] == model)), None)
    a, b = pick(slow), pick(fast)
    return a["infer_step_time"] / b["infer_step_time"] if a and b else None
