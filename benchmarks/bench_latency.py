"""Batch-1 CPU latency of ParNet: fusion, the roof, small images against ResNets, stream-parallel execution.

    .venv/bin/python benchmarks/bench_latency.py --out docs/results        # ~5-10 min on 2 cores

Writes latency.json (every row, nondeep.bench's fields) and latency.md (command, machine, torch, date, then
the tables). Sections, all in one run and each timed in interleaved rounds (A, B, A, B, ...) so that a
background load that comes and goes weighs on every candidate of a section alike:
  (a) fused vs unfused ParNet-S, batch 1, 224x224, eager                                 target >= 1.25x
  (b) roof fraction (achieved GFLOP/s / float32 2048^2 matmul GFLOP/s, measured in this run) of fused
      ParNet-S eager (target >= 60%) and of the fastest path among channels_last, torch.compile,
      stream-parallel threads and ONNX Runtime (nondeep.export, when present)                target >= 75%
  (c) small images (1x28x28, batch 1): parnet_tiny, parnet_small_image_s fused vs pre-act ResNet-20/56/110 and
      torchvision ResNet-18 adapted to 28x28 grey images (3x3 stride-1 stem conv, no max-pool)
  (d) stream-parallel (nondeep.parallel.StreamParallel) vs sequential: fused ParNet-S at 224, parnet_tiny at 28
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from torch import nn
import torch.nn.functional as F

from _common import header, machine  # benchmarks/_common.py (the script's folder is on sys.path)

import nondeep
from nondeep import measure
from nondeep.bench import Candidate, compile_candidate, module_candidate, time_candidates, wait_for_quiet
from nondeep.parallel import StreamParallel, intra_op_threads
from nondeep.report import format_table, write_json, write_text

warnings.filterwarnings("ignore", category=FutureWarning)  # TorchScript (fork mode) deprecation notices
warnings.filterwarnings("ignore", message=".*CUDA.*")

COLUMNS = ["model", "variant", "infer_step_time", "infer_step_time_p10", "infer_step_time_p90",
           "infer_samples_per_sec", "param_count", "infer_gmacs", "depth", "achieved_gflops", "roof_fraction",
           "roof_fraction_conv"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@torch.inference_mode()
def conv_peak_gflops(repeats: int = 10) -> float:
    """A second, labelled reference: GFLOP/s of one large 3x3 conv (256 -> 256 channels, 56x56, batch 1) in
    PyTorch's CPU conv library (oneDNN) on the current threads. On CPUs where MKL's sgemm is not the fastest
    kernel (e.g. AMD), this is above the matmul roof."""
    x, w = torch.randn(1, 256, 56, 56), torch.randn(256, 256, 3, 3)
    for _ in range(3):
        F.conv2d(x, w, padding=1)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        F.conv2d(x, w, padding=1)
        times.append(time.perf_counter() - start)
    return 2 * 9 * 256 * 256 * 56 * 56 / statistics.median(times) / 1e9


def roofs(threads: int) -> dict[str, float]:
    with intra_op_threads(threads):
        return {"matmul_gflops": measure.matmul_peak_gflops(), "conv_gflops": conv_peak_gflops()}


def variant(c: Candidate, text: str) -> Candidate:
    c.extra["variant"] = text
    return c


def finish(rows: list[dict[str, Any]], roof: dict[str, float]) -> list[dict[str, Any]]:
    for r in rows:
        r["roof_fraction_conv"] = r["achieved_gflops"] / roof["conv_gflops"]
        r.setdefault("variant", r["form"])
    return rows


def parnet(name: str, **kwargs: Any) -> tuple[nn.Module, nn.Module, int]:
    model = nondeep.create_model(name, **kwargs).eval()
    return model, nondeep.reparameterize_model(model), measure.depth(model)


def resnet18_small(in_chans: int = 1, num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 for 28x28 grey images: a 3x3 stride-1 stem conv and no max-pool."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model.eval()


def onnx_candidate(fused: nn.Module, label: str, size: tuple[int, ...], depth: int, threads: int,
                   workdir: Path) -> Candidate | str:
    """ONNX Runtime (CPU provider, `threads` intra-op threads) on the fused model exported by nondeep.export;
    a string saying why not when that is unavailable."""
    try:
        from nondeep.export import export_onnx
        import onnxruntime as ort
    except ImportError as err:
        return f"not run: {err}"
    path = workdir / f"{label}.onnx"
    try:
        result = export_onnx(fused, path, input_size=size, threads=threads, warmup=1, repeats=3)
    except Exception as err:  # report it in the slot, keep the rest of the run
        return f"export failed: {type(err).__name__}: {err}"
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return Candidate(label, "onnxruntime", lambda x: session.run(None, {"input": x.numpy()}), size,
                     measure.count_flops(fused, size), measure.count_params(fused), depth,
                     extra={"variant": f"ONNX Runtime {ort.__version__} (opset {result.get('opset')})",
                            "onnx_max_abs_err": result.get("max_abs_err")})


def section_a_b(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    size = (3, 224, 224)
    model, fused, depth = parnet("parnet_s")
    log("(a) fused vs unfused ParNet-S")
    wait_for_quiet(args.quiet_wait)
    roof = roofs(args.threads)
    rows_a = finish(time_candidates(
        [variant(module_candidate(model, "parnet_s", "unfused", size, depth=depth), "unfused (training form)"),
         variant(module_candidate(fused, "parnet_s", "fused", size, depth=depth), "fused")],
        1, args.repeats_224, 5, args.threads, peak_gflops=roof["matmul_gflops"]), roof)
    by = {r["form"]: r for r in rows_a}
    a = {"rows": rows_a, "roof": roof, "unfused_ms": by["unfused"]["infer_step_time"],
         "fused_ms": by["fused"]["infer_step_time"],
         "speedup": by["unfused"]["infer_step_time"] / by["fused"]["infer_step_time"], "target": 1.25}

    log("(b) fastest path: channels_last, torch.compile, stream-parallel, ONNX Runtime")
    with intra_op_threads(args.threads):
        fused_cl = nondeep.reparameterize_model(model).to(memory_format=torch.channels_last)
        candidates = [variant(module_candidate(fused, "parnet_s", "fused", size, depth=depth), "fused eager"),
                      variant(module_candidate(fused_cl, "parnet_s", "fused", size, depth=depth, channels_last=True),
                              "fused eager, channels_last")]
        parallel = StreamParallel(fused, "threads")
        candidates.append(variant(module_candidate(parallel, "parnet_s", "stream_parallel", size, depth=depth,
                                                   flops_of=fused, stream_mode="threads"),
                                  f"stream-parallel threads ({parallel.threads_per_stream}/stream)"))
        if not args.no_compile:
            for cl in (False, True):
                log(f"    compiling ParNet-S ({'channels_last' if cl else 'NCHW'})")
                c = compile_candidate(fused_cl if cl else fused, "parnet_s", size, depth=depth, channels_last=cl)
                candidates.append(variant(c, f"torch.compile{', channels_last' if cl else ''} "
                                             f"(compiled in {c.compile_time_s:.0f} s)"))
        log("    exporting to ONNX")
        onnx = onnx_candidate(fused, "parnet_s", size, depth, args.threads, workdir)
    if isinstance(onnx, Candidate):
        candidates.append(onnx)
    wait_for_quiet(args.quiet_wait)
    roof_b = roofs(args.threads)
    rows_b = finish(time_candidates(candidates, 1, args.repeats_224, 5, args.threads,
                                    peak_gflops=roof_b["matmul_gflops"]), roof_b)
    parallel.close()
    eager = rows_b[0]
    best = min(rows_b[1:], key=lambda r: r["infer_step_time"])
    b = {"rows": rows_b, "roof": roof_b, "fused_eager_roof_fraction": eager["roof_fraction"],
         "best_variant": best["variant"], "best_ms": best["infer_step_time"],
         "best_roof_fraction": best["roof_fraction"], "targets": {"fused_eager": 0.60, "best": 0.75},
         "onnx": onnx if isinstance(onnx, str) else "timed"}
    return {"a": a, "b": b}


def section_c(args: argparse.Namespace) -> dict[str, Any]:
    log("(c) small images: ParNet vs pre-act ResNets and ResNet-18 at 1x28x28")
    size = (1, 28, 28)
    candidates, compiled = [], []
    with intra_op_threads(args.threads):
        for name in ("parnet_tiny", "parnet_small_image_s"):
            model, fused, depth = parnet(name, in_chans=1)
            candidates.append(variant(module_candidate(model, name, "unfused", size, depth=depth), "unfused"))
            candidates.append(variant(module_candidate(fused, name, "fused", size, depth=depth), "fused"))
            compiled.append((fused, name, depth))
        baselines = [(n, nondeep.create_model(n, in_chans=1).eval()) for n in
                     ("preact_resnet_20", "preact_resnet_56", "preact_resnet_110")]
        baselines.append(("resnet18_28x28", resnet18_small()))
        for name, model in baselines:
            depth = measure.depth(model)
            candidates.append(variant(module_candidate(model, name, "eager", size, depth=depth), "eager"))
            compiled.append((model, name, depth))
        if not args.no_compile:
            for model, name, depth in compiled:
                log(f"    compiling {name}")
                c = compile_candidate(model, name, size, depth=depth)
                candidates.append(variant(c, f"torch.compile ({c.compile_time_s:.0f} s)"))
    wait_for_quiet(args.quiet_wait)
    roof = roofs(args.threads)
    rows = finish(time_candidates(candidates, 1, args.repeats_28, 10, args.threads,
                                  peak_gflops=roof["matmul_gflops"]), roof)

    def ms(model: str, form: str) -> float | None:
        return next((r["infer_step_time"] for r in rows if r["model"] == model and r["form"] == form), None)

    comparisons = []
    for p in ("parnet_tiny", "parnet_small_image_s"):
        for base in ("preact_resnet_20", "preact_resnet_56", "preact_resnet_110", "resnet18_28x28"):
            for p_form, b_form in (("fused", "eager"), ("compiled", "compiled")):
                if ms(p, p_form) and ms(base, b_form):
                    comparisons.append({"parnet": f"{p} ({p_form})", "baseline": f"{base} ({b_form})",
                                        "parnet_ms": ms(p, p_form), "baseline_ms": ms(base, b_form),
                                        "baseline_over_parnet": ms(base, b_form) / ms(p, p_form)})
    return {"rows": rows, "roof": roof, "comparisons": comparisons}


def section_d(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, size, repeats in (("parnet_s", (3, 224, 224), args.repeats_224),
                                ("parnet_tiny", (1, 28, 28), args.repeats_28)):
        log(f"(d) stream-parallel vs sequential: {name} at {'x'.join(map(str, size))}")
        with intra_op_threads(args.threads):
            _, fused, depth = parnet(name, in_chans=size[0])
            one = module_candidate(fused, name, "fused", size, depth=depth)
            one.fn = _with_threads(fused, 1)  # the intra-op scaling reference
            cands = [variant(module_candidate(fused, name, "fused", size, depth=depth),
                             f"sequential, {args.threads} intra-op threads"),
                     variant(one, "sequential, 1 intra-op thread")]
            wrappers = [StreamParallel(fused, "threads"),
                        StreamParallel(fused, "threads", threads_per_stream=args.threads,
                                       main_threads_in_parallel=args.threads),
                        StreamParallel(fused, "threads", overlap=False),
                        StreamParallel(fused, "fork")]
            labels = [f"threads, {wrappers[0].threads_per_stream} thread/stream, overlap",
                      f"threads, {args.threads} threads/stream, overlap",
                      f"threads, {wrappers[2].threads_per_stream} thread/stream, no overlap",
                      f"fork (TorchScript, {torch.get_num_interop_threads()} inter-op threads)"]
            for w, label in zip(wrappers, labels):
                cands.append(variant(module_candidate(w, name, "stream_parallel", size, depth=depth, flops_of=fused,
                                                      stream_mode=w.mode), label))
            with torch.inference_mode():  # the outputs agree with the sequential model
                x = torch.randn(1, *size)
                ref = fused(x)
                errs = [(w(x) - ref).abs().max().item() for w in wrappers]
        wait_for_quiet(args.quiet_wait)
        roof = roofs(args.threads)
        rows = finish(time_candidates(cands, 1, repeats, 5, args.threads, peak_gflops=roof["matmul_gflops"]), roof)
        for w in wrappers:
            w.close()
        seq = rows[0]["infer_step_time"]
        for r, err in zip(rows[2:], errs):
            r["max_abs_err_vs_sequential"] = err
        out[name] = {"rows": rows, "roof": roof, "sequential_ms": seq,
                     "intra_op_scaling": rows[1]["infer_step_time"] / seq,
                     "speedups": {r["variant"]: seq / r["infer_step_time"] for r in rows[2:]}}
    return out


def _with_threads(model: nn.Module, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with intra_op_threads(threads):
            return model(x)
    return run


def fastest_forms(sec: dict[str, Any]) -> tuple[tuple[str, float], tuple[str, float]]:
    """(label, ms) of the fastest sequential row and of the fastest stream-parallel row of a (d) section.
    The honest baseline is the fastest sequential form, whatever its thread count: on small inputs one
    thread beats two, and a 2-thread baseline would flatter the parallel forms."""
    rows = sec["rows"]
    seq = min(rows[:2], key=lambda r: r["infer_step_time"])
    par = min(rows[2:], key=lambda r: r["infer_step_time"])
    return (seq["variant"], seq["infer_step_time"]), (par["variant"], par["infer_step_time"])


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def markdown(meta: dict, results: dict[str, Any], elapsed: float) -> str:
    a, b, c, d = results["a"], results["b"], results["c"], results["d"]
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    sections = (a, b, c, *d.values())
    matmul = ", ".join(f"{sec['roof']['matmul_gflops']:.0f}" for sec in sections)
    conv = ", ".join(f"{sec['roof']['conv_gflops']:.0f}" for sec in sections)
    busy = ", ".join("n/a" if sec["rows"][0]["background_cpu"] is None else f"{sec['rows'][0]['background_cpu']:.2f}"
                     for sec in sections)
    lines = [header("ParNet latency on CPU: fusion, the roof, small images, stream parallelism", meta).rstrip(),
             f"- platform: {meta['platform']}, os.cpu_count() = {meta['cpu_count']}",
             f"- threads: {results['threads']} intra-op (torch.set_num_threads), batch 1, float32, eager unless "
             f"stated; the run took {elapsed / 60:.1f} min",
             f"- roof: float32 2048x2048 matmul (nondeep.measure.matmul_peak_gflops), measured before each "
             f"section (a, b, c, d): {matmul} GFLOP/s. Second reference (`roof_fraction_conv`): one 256-channel "
             f"3x3 conv at 56x56 in oneDNN, {conv} GFLOP/s.",
             f"- background load (other processes; fraction of all CPUs busy just before each section's timing): "
             f"{busy}",
             "- every section times its candidates in interleaved rounds; `infer_step_time` is the median (ms), "
             "p10/p90 the spread; `roof_fraction` = achieved GFLOP/s (2 x MACs of the timed math / median time) "
             "over the matmul roof.", "", "## Summary", "",
             "| target | measured | |", "|---|---|---|",
             f"| (a) fused ParNet-S >= 1.25x faster than unfused (224, batch 1) | {a['unfused_ms']:.1f} -> "
             f"{a['fused_ms']:.1f} ms: **{a['speedup']:.2f}x** | {verdict(a['speedup'] >= 1.25)} |",
             f"| (b) fused ParNet-S eager >= 60% of the roof | **{pct(b['fused_eager_roof_fraction'])}** | "
             f"{verdict(b['fused_eager_roof_fraction'] >= 0.60)} |",
             f"| (b) fastest path >= 75% of the roof | {b['best_variant']}: {b['best_ms']:.1f} ms, "
             f"**{pct(b['best_roof_fraction'])}** | {verdict(b['best_roof_fraction'] >= 0.75)} |"]
    for comp in c["comparisons"]:
        lines.append(f"| (c) {comp['parnet']} faster than {comp['baseline']} at 1x28x28 | {comp['parnet_ms']:.2f} "
                     f"vs {comp['baseline_ms']:.2f} ms: **{comp['baseline_over_parnet']:.2f}x** | "
                     f"{verdict(comp['baseline_over_parnet'] > 1)} |")
    for name, sec in d.items():
        (seq_label, seq_ms), (par_label, par_ms) = fastest_forms(sec)
        lines.append(f"| (d) {name}: fastest stream-parallel form vs fastest sequential form | {par_label} "
                     f"{par_ms:.2f} ms vs {seq_label} {seq_ms:.2f} ms: **{seq_ms / par_ms:.2f}x** (>1 = faster) | "
                     f"{'faster' if par_ms < seq_ms else 'slower'} |")
    if b["onnx"] != "timed":
        lines.append(f"| (b) ONNX Runtime slot | {b['onnx']} | |")
    lines += ["", "## (a) Fusion: ParNet-S, 3x224x224, batch 1", "", format_table(a["rows"], COLUMNS), "",
              "## (b) The roof: fused ParNet-S, fastest path", "", format_table(b["rows"], COLUMNS), "",
              "## (c) Small images: 1x28x28, batch 1 (untrained weights; accuracies come from training)", "",
              format_table(c["rows"], COLUMNS), "", format_table(c["comparisons"]), ""]
    for name, sec in d.items():
        lines += [f"## (d) Stream-parallel vs sequential: {name}", "",
                  f"Intra-op scaling of the sequential model (1 thread / {results['threads']} threads): "
                  f"{sec['intra_op_scaling']:.2f}x.", "",
                  format_table(sec["rows"], COLUMNS + ["max_abs_err_vs_sequential"]), ""]
    lines += ["## Notes", "", notes(results), ""]
    return "\n".join(lines)


def notes(results: dict[str, Any]) -> str:
    """The observations, with this run's numbers in them."""
    a, b, c, d = results["a"], results["b"], results["c"], results["d"]
    sections = [("a", a), ("b", b), ("c", c), *((f"d/{k}", v) for k, v in d.items())]
    matmul = statistics.median(sec["roof"]["matmul_gflops"] for _, sec in sections)
    conv = statistics.median(sec["roof"]["conv_gflops"] for _, sec in sections)
    out = [f"- **The roof.** The agreed roof is a float32 2048x2048 matmul (PyTorch runs it in MKL's sgemm): "
           f"{matmul:.0f} GFLOP/s here (median over the sections). One large 3x3 conv in oneDNN, PyTorch's CPU "
           f"conv library, reached {conv:.0f} GFLOP/s, {conv / matmul:.2f}x the matmul."]
    if conv > 1.1 * matmul:
        out.append("  On this CPU the BLAS is not the fastest kernel (MKL does not take its AVX-512 path on AMD "
                   "CPUs; oneDNN does), so a conv net can pass 100% of the matmul roof. Read `roof_fraction` as "
                   "\"against the agreed matmul\" and `roof_fraction_conv` as against what the conv library "
                   "reaches on one big, easy conv.")
    for name, sec in d.items():
        (seq_label, seq_ms), (par_label, par_ms) = fastest_forms(sec)
        best_label, best = max(sec["speedups"].items(), key=lambda kv: kv[1])
        scaling = sec["intra_op_scaling"]
        out.append(f"- **Stream parallelism, {name}.** Sequential: {sec['sequential_ms']:.2f} ms on "
                   f"{results['threads']} threads, {scaling:.2f}x the speed on 1 thread (the intra-op scaling). "
                   f"Best stream-parallel form: {best_label}, {best:.2f}x the {results['threads']}-thread "
                   f"sequential speed; against the fastest sequential form ({seq_label}, {seq_ms:.2f} ms) it is "
                   f"{seq_ms / par_ms:.2f}x ({'faster' if par_ms < seq_ms else 'slower'}), the figure in the "
                   f"summary.")
    out.append(
        "  What limits it on 2 cores: PyTorch already splits each conv of the sequential model across "
        "both cores. Where that intra-op scaling is near 2x (ParNet-S at 224), running the three streams side "
        "by side can at best re-balance the same work, and pays thread hand-offs, the imbalance of streams of "
        "unequal cost (the longest stream on 1 thread can outlast all three on 2), and OpenMP teams that spin "
        "while another stream's thread wants the core. Where intra-op scaling is poor (parnet_tiny at 28x28, "
        "each op lasting microseconds), the time goes to Python dispatch, which holds the GIL: Python threads "
        "cannot overlap it, and TorchScript's `fork` escapes the GIL but adds its interpreter's overhead. The "
        "streams' independence pays where each stream gets its own processor: the paper's one-stream-per-GPU "
        "setting (nondeep.parallel's \"devices\" mode; \"cuda_streams\" on one GPU). "
        "The (d) rows are timed interleaved with thread-pool forms whose OpenMP teams keep spinning after "
        "their work, which slows a 2-thread sequential model timed next to them (compare parnet_tiny's fused "
        "row in (c)); the summary therefore measures each parallel form against the fastest sequential form.")
    loaded = [label for label, sec in sections
              if (sec["rows"][0]["background_cpu"] or 0) > 0.2]
    if loaded:
        out.append(f"- **Measured under load:** section(s) {', '.join(loaded)} started while other processes kept "
                   "more than 20% of the CPUs busy. PyTorch eager on 2 OpenMP threads degrades far more under "
                   "such contention than single-threaded streams or ONNX Runtime (OpenMP barriers wait on a "
                   "thread that has lost its core): treat those absolute numbers as unreliable.")
    out.append("- This machine is shared: absolute numbers move from run to run with other processes' load. "
               "The ratios within a section are the robust figures (its candidates are timed interleaved).")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/results", help="folder for latency.json and latency.md")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats-224", type=int, default=40, help="timed calls per candidate at 224x224")
    p.add_argument("--repeats-28", type=int, default=200, help="timed calls per candidate at 28x28")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (saves a few minutes)")
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="seconds to wait, before each section, for other processes to leave the CPUs")
    p.add_argument("--render", metavar="JSON",
                   help="re-write latency.md from a latency.json this script wrote, measuring nothing")
    args = p.parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        write_text(Path(args.out) / "latency.md", markdown(saved["meta"], saved, saved["meta"]["elapsed_s"]))
        log(f"re-wrote {Path(args.out) / 'latency.md'} from {args.render}")
        return 0
    torch.set_num_threads(args.threads)  # before anything starts a thread pool (fork mode's inter-op pool)
    torch.manual_seed(0)
    meta = {**machine(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, Any] = {"threads": args.threads, **section_a_b(args, Path(tmp))}
    results["c"] = section_c(args)
    results["d"] = section_d(args)
    elapsed = time.time() - start
    out = Path(args.out)
    write_json(out / "latency.json", {"meta": {**meta, "elapsed_s": elapsed, "args": vars(args)}, **results})
    write_text(out / "latency.md", markdown(meta, results, elapsed))
    log(f"wrote {out / 'latency.json'} and {out / 'latency.md'} in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
