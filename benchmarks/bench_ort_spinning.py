"""ONNX Runtime sessions timed side by side in one process: do the threads one session leaves spinning after a
run slow the next session's runs? Each model (parnet_tiny grown by width, and a WRN, fused, batch 1) is timed
alone and interleaved with the others (blocks of calls in turn, as nondeep's side-by-side timing does), with the
threads left spinning after a run (ONNX Runtime's default) and stopped (`session.force_spinning_stop`, what
nondeep.export.ort_session sets).

    .venv/bin/python benchmarks/bench_ort_spinning.py --out docs/results
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _common import header, machine
from nondeep.export import onnx_bytes, ort_session
from nondeep.models import create_model
from nondeep.reparam import reparameterize_model
from nondeep.report import format_table, write_json, write_text

MODELS = {"parnet_tiny": ("parnet_tiny", {}), "parnet_tiny x1.36": ("parnet_tiny", {"width_multiplier": 1.36}),
          "parnet_tiny x2": ("parnet_tiny", {"width_multiplier": 2.0}),
          "WRN-16-1.85": ("wide_resnet", {"depth": 16, "widen_factor": 1.85})}


def median_ms(sessions: dict[str, tuple], rounds: int, per_round: int) -> dict[str, float]:
    """Median batch-1 time of each session, its calls in blocks of `per_round`, the sessions in turn."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session, feed in sessions.values():
        for _ in range(5):
            session.run(None, feed)
    for _ in range(rounds):
        for name, (session, feed) in sessions.items():
            for _ in range(per_round):
                start = time.perf_counter()
                session.run(None, feed)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--out", default="runs/ort_spinning")
    args = parser.parse_args()
    torch.manual_seed(0)
    graphs = {}
    for label, (name, kwargs) in MODELS.items():
        model = reparameterize_model(create_model(name, num_classes=10, in_chans=1, **kwargs)).eval()
        sample = torch.randn(1, 1, 28, 28)
        graphs[label] = (onnx_bytes(model, sample, dynamic_batch=True), {"input": sample.numpy()})
    rows = []
    for spin_after_run in (True, False):
        # fresh sessions for each arm, and each "alone" timing in a process state where no other session has run
        alone = {}
        for label, (graph, feed) in graphs.items():
            alone.update(median_ms({label: (ort_session(graph, args.threads, spin_after_run), feed)},
                                   args.rounds, args.per_round))
        sessions = {label: (ort_session(graph, args.threads, spin_after_run), feed)
                    for label, (graph, feed) in graphs.items()}
        together = median_ms(sessions, args.rounds, args.per_round)
        for label in graphs:
            rows.append({"model": label, "threads_after_run": "spinning" if spin_after_run else "stopped",
                         "alone_ms": round(alone[label], 3), "side_by_side_ms": round(together[label], 3),
                         "side_by_side_vs_alone": round(together[label] / alone[label], 2)})
    meta = {**machine(), "threads": args.threads, "rounds": args.rounds, "per_round": args.per_round}
    worst = {arm: max(r["side_by_side_vs_alone"] for r in rows if r["threads_after_run"] == arm)
             for arm in ("spinning", "stopped")}
    markdown = (header("ONNX Runtime: threads left spinning between runs, timed side by side", meta)
                + f"- {args.threads} intra-op threads a session, batch 1, fused models at 28x28, median of "
                f"{args.rounds * args.per_round} calls, in blocks of {args.per_round}\n\n"
                + format_table(rows) + "\n\n"
                + f"Side by side, the slowest model against its own time alone: {worst['spinning']:.2f}x with the "
                f"threads left spinning, {worst['stopped']:.2f}x with them stopped. nondeep's sessions stop them "
                "(nondeep.export.ort_session), so that models timed side by side are each timed as alone.\n")
    out = Path(args.out)
    write_json(out / "ort_spinning.json", {"meta": meta, "rows": rows})
    write_text(out / "ort_spinning.md", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
