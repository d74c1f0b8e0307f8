"""Timing on a machine other processes share: per-call wall times of functions taken in interleaved rounds
(A, B, A, B, ...) so that noise hits them alike, in sections that each keep their own intra-op thread count,
their median and spread, and how busy the CPUs were before timing. nondeep.bench times inference forms with
these; the labs time their models' latency side by side with them."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Sequence

import torch

from . import measure
from .parallel import intra_op_threads


def cpu_busy_fraction(interval: float = 0.25) -> float | None:
    """Fraction of all CPUs busy over `interval` seconds (Linux /proc/stat); None where unavailable."""
    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    try:
        idle0, total0 = snapshot()
        time.sleep(interval)
        idle1, total1 = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, 1.0 - (idle1 - idle0) / max(1, total1 - total0))


def wait_for_quiet(max_wait_s: float = 0.0, threshold: float = 0.15, interval: float = 0.25) -> float | None:
    """Sample how busy the CPUs are (other processes); wait up to `max_wait_s` for it to drop below `threshold`.
    Returns the last sample (None where it cannot be measured)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = cpu_busy_fraction(interval)
        if busy is None or busy < threshold or time.monotonic() >= deadline:
            return busy
        time.sleep(1.0)


def _sync_fn(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device,
                     rounds: int | None = None) -> dict[str, list[float]]:
    """Per-call wall times (ms) of each function: `warmup` untimed calls each, then `repeats` timed calls each,
    spread over `rounds` rounds that visit the functions in turn (default: up to 5 rounds)."""
    sync = _sync_fn(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    rounds = max(1, min(rounds or 5, repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    times: dict[str, list[float]] = {name: [] for name in fns}
    for count in per_round:
        for name, fn in fns.items():
            for _ in range(count):
                start = time.perf_counter()
                fn()
                sync()
                times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def time_sections(sections: dict[str, tuple[int | None, dict[Any, Callable[[], Any]]]], repeats: int, warmup: int,
                  device: torch.device, rounds: int | None = None,
                  settle: int = 2) -> tuple[dict[Any, list[float]], dict[str, tuple[float, float]]]:
    """Per-call wall times (ms) of each function of each section {name: (intra-op threads, {key: fn})}.

    Within a section the functions take turns (time_interleaved); the sections take turns round by round, under
    their own thread count (None: leave it). A visit after the first starts with `settle` untimed calls each
    when there are several sections. Returns the times and each section's 1-min load average at its first and
    last visit."""
    rounds = max(1, min(rounds or 5, repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    times: dict[Any, list[float]] = {k: [] for _, fns in sections.values() for k in fns}
    load: dict[str, list[float]] = {name: [] for name in sections}
    for r, count in enumerate(per_round):
        for name, (threads, fns) in sections.items():
            with intra_op_threads(threads):
                if r == 0:
                    load[name].append(os.getloadavg()[0])
                first = warmup if r == 0 else (settle if len(sections) > 1 else 0)
                for key, values in time_interleaved(fns, count, first, device, rounds=1).items():
                    times[key] += values
            if r == len(per_round) - 1:
                load[name].append(os.getloadavg()[0])
    return times, {name: (v[0], v[-1]) for name, v in load.items()}


def summarize(times: Sequence[float], batch_size: int) -> measure.Latency:
    """Median and 10th/90th percentiles (the median itself when there are too few samples for deciles)."""
    median = statistics.median(times)
    if len(times) >= 2:
        deciles = statistics.quantiles(times, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    else:
        p10 = p90 = median
    return measure.Latency(median, p10, p90, len(times), batch_size)
