"""Latency of ParNet against ResNets in every inference form on one device: a thin script over nondeep.bench.

    .venv/bin/python benchmarks/bench_latency.py --out docs/results                  # CPU -> latency.{json,md}
    python benchmarks/bench_latency.py --device cuda --out docs/results            # GPU -> latency-gpu.{json,md}

Each model gets the forms of nondeep.inference (nondeep.bench.prepare_model), and the models of a suite (224, then
28) are timed side by side (nondeep.bench.time_models): one section per thread regime (torch on N threads, ONNX
Runtime, stream-parallel threads), every form of every model in interleaved rounds within and across sections.
Each row records its precision, threads, load average, its output's relative error against the fused float32
eager model, and its fraction of the roof (the highest rate measured in this run: a large matmul and a large conv
in the form's precision; nondeep.inference.roof).

- CPU preset: ParNet-S vs torchvision ResNet-18/34/50 at 3x224x224, and parnet_tiny vs pre-act ResNet-20/56 and
  the small-image ResNet-18 at 1x28x28; batch 1; unfused and fused, channels_last, onnxruntime, streams, and
  compiled for --compile-models; the torch and ONNX Runtime forms on --threads and on 1 thread.
- GPU preset: ParNet-S/M/L/XL vs ResNet-18/34/50/101 at 224 and the 28x28 family, batch 1 and 64; fused eager,
  channels_last, streams, graph, streams_graph in float32 (TF32 off) and float16, and compiled_graph in float16
  for --compile-models. Every graph replay's output is checked against the eager model (`rel_err` vs
  `tolerance`); a form outside its tolerance is listed under "Output checks".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from _common import machine  # benchmarks/_common.py (the script's folder is on sys.path)

from nondeep.bench import check_row, prepare_model, refresh_roof, time_models
from nondeep.inference import TOLERANCE, device_info, measure_roof
from nondeep.plots import plot_scatter
from nondeep.report import format_table, write_json, write_text

MODELS_224 = {"cpu": ["parnet_s", "torchvision:resnet18", "torchvision:resnet34", "torchvision:resnet50"],
              "cuda": ["parnet_s", "parnet_m", "parnet_l", "parnet_xl", "torchvision:resnet18",
                       "torchvision:resnet34", "torchvision:resnet50", "torchvision:resnet101"]}
MODELS_28 = ["parnet_tiny", "preact_resnet_20", "preact_resnet_56", "resnet18_small_image"]
FORMS = {"cpu": ["eager", "channels_last", "onnxruntime", "streams"],
         "cuda": ["eager", "channels_last", "streams", "graph", "streams_graph"]}
COMPILE_FORM = {"cpu": "compiled", "cuda": "compiled_graph:float16"}
PRECISIONS = {"cpu": ["float32"], "cuda": ["float32", "float16"]}
BATCHES = {"cpu": [1], "cuda": [1, 64]}
# ImageNet top-1 as published, for README's headline figure: the ParNet paper's Table 1 (Goyal et al. 2021) and
# torchvision's documented IMAGENET1K_V1 weights (acc@1). nondeep trains on neither; only the latency is measured.
PUBLISHED_TOP1 = {"parnet_s": (75.19, "ParNet paper, Table 1"), "parnet_m": (76.60, "ParNet paper, Table 1"),
                  "parnet_l": (77.66, "ParNet paper, Table 1"), "parnet_xl": (78.55, "ParNet paper, Table 1"),
                  "torchvision:resnet18": (69.758, "torchvision IMAGENET1K_V1"),
                  "torchvision:resnet34": (73.314, "torchvision IMAGENET1K_V1"),
                  "torchvision:resnet50": (76.130, "torchvision IMAGENET1K_V1"),
                  "torchvision:resnet101": (77.374, "torchvision IMAGENET1K_V1")}
COLUMNS = ["model", "form", "precision", "threads", "infer_batch_size", "infer_step_time", "infer_step_time_p10",
           "infer_step_time_p90", "achieved_gflops", "roof_fraction", "rel_err", "loadavg_before", "section"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _results(info: dict[str, Any], roof: Any, rows: list[dict[str, Any]], failures: list[dict[str, Any]],
             args: argparse.Namespace, start: float, models_done: int, models: int) -> dict[str, Any]:
    meta = {**info, "loadavg_after": list(os.getloadavg()), "elapsed_s": time.time() - start,
            "models_done": models_done, "models": models}
    return {"meta": meta, "roof": roof.as_dict(), "rows": rows, "failures": failures, "tolerance": TOLERANCE,
            "args": vars(args)}


def run(args: argparse.Namespace, progress: Callable[[dict[str, Any]], None] = lambda results: None
        ) -> dict[str, Any]:
    """Every suite's rows, the roof measured before and after; `progress` gets the results so far after each
    suite (its roof the one measured at the start), so a run cut short keeps what it measured."""
    device = torch.device(args.device)
    kind = device.type
    torch.set_num_threads(args.threads)
    info = {**device_info(device), "command": machine()["command"], "date": machine()["date"],
            "nice": os.nice(0), "threads": args.threads, "interleaved": "models of a suite"}
    log(f"{info['cpu_model']} / {info.get('gpu')}: load average {info['loadavg']}, nice {info['nice']}")
    roof = measure_roof(device, tuple(PRECISIONS[kind]), args.threads, onnxruntime=kind == "cpu")
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    suites = [(args.models_224, (3, 224, 224)), (args.models_28, (1, 28, 28))]
    total, done = len(args.models_224) + len(args.models_28), 0
    start = time.time()
    for names, size in suites:  # a suite's models side by side, in the same interleaved rounds
        prepared = []
        for name in names:
            forms = FORMS[kind] + ([COMPILE_FORM[kind]] if name in args.compile_models else [])
            log(f"{name} at {'x'.join(map(str, size))}: {', '.join(forms)}")
            prepared.append(prepare_model(name, size, args.threads, device, kind == "cpu" and size[-1] == 224,
                                          forms=forms, precisions=PRECISIONS[kind], in_chans=size[0],
                                          thread_counts=sorted({args.threads, 1}, reverse=True), failures=failures))
        log(f"timing {len(prepared)} models at {'x'.join(map(str, size))} side by side")
        rows += time_models(prepared, args.batch_sizes or BATCHES[kind], args.threads, device, args.repeats,
                            args.warmup, roof=roof)
        done += len(names)
        progress(_results(info, roof, rows, failures, args, start, done, total))
    # Measured again after: the roof is the highest rate seen on the device in the run.
    roof = roof.merge(measure_roof(device, tuple(PRECISIONS[kind]), args.threads, onnxruntime=kind == "cpu"))
    refresh_roof(rows, roof)
    for row in rows:
        check_row(row)  # a roof fraction above 1 stops the run, nothing written: the roof would not be a roof
    return _results(info, roof, rows, failures, args, start, total, total)


def _label(row: dict[str, Any]) -> str:
    threads = f", {row['threads']}t" if row["device"] == "cpu" else ""
    return f"{row['form']} ({row['precision']}{threads})"


def fastest(rows: list[dict[str, Any]], model: str, batch: int, **where: Any) -> dict[str, Any] | None:
    """The fastest row of a model at a batch size among the forms that passed their output check."""
    pool = [r for r in rows if r["model"] == model and r["infer_batch_size"] == batch and r["form"] != "unfused"
            and r.get("rel_err", 0.0) <= r.get("tolerance", 1.0) and all(r.get(k) == v for k, v in where.items())]
    return min(pool, key=lambda r: r["infer_step_time"]) if pool else None


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for batch in sorted({r["infer_batch_size"] for r in rows if r["model"] == model}):
            eager = fastest(rows, model, batch, form="fused") or fastest(rows, model, batch, form="eager")
            best = fastest(rows, model, batch)
            seq = fastest(rows, model, batch, stream_mode=None)
            par = min((r for r in rows if r["model"] == model and r["infer_batch_size"] == batch and r["stream_mode"]),
                      key=lambda r: r["infer_step_time"], default=None)
            out.append({"model": model, "batch": batch, "fused_eager_ms": eager and eager["infer_step_time"],
                        "fastest_form": best and _label(best), "fastest_ms": best and best["infer_step_time"],
                        "fastest_roof_fraction": best and best["roof_fraction"],
                        "streams_over_fastest_sequential":
                            par and seq and par["infer_step_time"] / seq["infer_step_time"]})
    return out


def headline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Published ImageNet top-1 against measured batch-1 latency in the fastest form that passed its output
    check; a faster form that failed its check is named beside it, not used."""
    out = []
    for model, (top1, source) in PUBLISHED_TOP1.items():
        best = fastest(rows, model, 1)
        if best is None:
            continue
        failed = [r for r in rows if r["model"] == model and r["infer_batch_size"] == 1 and r["form"] != "unfused"
                  and r["infer_step_time"] < best["infer_step_time"]]
        failed = min(failed, key=lambda r: r["infer_step_time"], default=None)
        out.append({"model": model, "published_top1": top1, "accuracy_source": source,
                    "fastest_form": _label(best), "batch1_ms": best["infer_step_time"],
                    "faster_but_failed_check": failed and f"{_label(failed)} {failed['infer_step_time']:.3f} ms "
                                                          f"(rel_err {failed.get('rel_err')})"})
    return out


def plot_headline(results: dict[str, Any], path: Path) -> None:
    points = [{**row, "label": f"{row['model'].split(':')[-1]}: {row['fastest_form']}" + (
        f"; faster, failed its check: {row['faster_but_failed_check'].split(' (rel_err')[0]}"
        if row["faster_but_failed_check"] else "")} for row in headline(results["rows"])]
    device = results["meta"].get("gpu") or results["meta"]["cpu_model"]
    plot_scatter(points, "batch1_ms", "published_top1", path, label="label", xlabel="batch-1 latency (ms, measured)",
                 ylabel="ImageNet top-1 (%, published)",
                 title=f"Published accuracy, measured latency: {device}, 224x224, {results['meta']['date']}")


def _ms(rows: list[dict[str, Any]], model: str, batch: int = 1, **where: Any) -> float | None:
    row = fastest(rows, model, batch, **where)
    return row["infer_step_time"] if row else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows, kind = results["rows"], results["rows"][0]["device"].split(":")[0]
    out = []

    def add(target: str, measured: str, ok: bool | None) -> None:
        out.append({"target": target, "measured": measured, "verdict": "n/a" if ok is None else
                    ("met" if ok else "NOT met")})

    if kind == "cpu":
        unfused = next((r["infer_step_time"] for r in rows if r["model"] == "parnet_s" and r["form"] == "unfused"
                        and r["infer_batch_size"] == 1), None)
        fused = _ms(rows, "parnet_s", form="fused")
        if unfused and fused:
            add("fused ParNet-S >= 1.25x unfused (eager, 224, batch 1)", f"{unfused:.1f} -> {fused:.1f} ms: "
                f"{unfused / fused:.2f}x", unfused / fused >= 1.25)
        best = fastest(rows, "parnet_s", 1)
        if best:
            add("fastest ParNet-S form >= 75% of the roof", f"{_label(best)} {best['infer_step_time']:.1f} ms: "
                f"{100 * best['roof_fraction']:.0f}% of {best['roof_gflops']:.0f} GFLOP/s",
                best["roof_fraction"] >= 0.75)
    else:
        for precision in ("float16", "float32"):
            graph = _ms(rows, "parnet_s", form="graph", precision=precision)
            sgraph = _ms(rows, "parnet_s", form="streams_graph", precision=precision)
            if graph and sgraph:
                add(f"ParNet-S streams_graph <= 0.70x its graph form ({precision}, batch 1)",
                    f"{sgraph:.3f} vs {graph:.3f} ms: {sgraph / graph:.2f}x", sgraph / graph <= 0.70)
        r50 = _ms(rows, "torchvision:resnet50", form="graph", precision="float16")
        for name in ("parnet_l", "parnet_xl"):
            best = fastest(rows, name, 1)
            if best and r50:
                add(f"{name} (fastest form) below ResNet-50's graph form (float16, batch 1)",
                    f"{_label(best)} {best['infer_step_time']:.3f} vs {r50:.3f} ms",
                    best["infer_step_time"] < r50)
        best = fastest(rows, "parnet_s", 1)
        if best:
            add("stretch: ParNet-S <= 0.45 ms (batch 1)", f"{_label(best)} {best['infer_step_time']:.3f} ms",
                best["infer_step_time"] <= 0.45)
    tiny = fastest(rows, "parnet_tiny", 1)
    for base in ("preact_resnet_20", "preact_resnet_56", "resnet18_small_image"):
        other = fastest(rows, base, 1)
        if tiny and other:
            ratio = other["infer_step_time"] / tiny["infer_step_time"]
            add(f"28x28: parnet_tiny vs {base}, each in its fastest form (batch 1)",
                f"{_label(tiny)} {tiny['infer_step_time']:.3f} vs {_label(other)} {other['infer_step_time']:.3f} ms: "
                f"parnet_tiny {'faster' if ratio > 1 else 'slower'} ({ratio:.2f}x)", None)
    return out


def markdown(results: dict[str, Any]) -> str:
    meta, rows = results["meta"], results["rows"]
    kind = rows[0]["device"].split(":")[0]
    gpu = f"{meta['gpu']} ({meta.get('gpu_memory_gib')} GiB, CUDA {meta.get('cuda_version')}, cuDNN " \
          f"{meta.get('cudnn_version')}); host " if meta.get("gpu") else ""
    roof = ", ".join(f"{c['kernel']} {c['precision']} {c['backend']} ({c['shape']}"
                     f"{', %d thread%s' % (c['threads'], 's' * (c['threads'] != 1)) if c.get('threads') else ''}) "
                     f"{c['gflops']:.0f}" for c in results["roof"]["components"])
    peak_load = max(meta["loadavg"][0], meta["loadavg_after"][0], *(r["loadavg_before"] for r in rows),
                    *(r["loadavg_after"] for r in rows))
    # The load average counts this benchmark's own threads; the CPU share other processes took just before each
    # timing (background_cpu, sampled while this process sleeps) does not.
    busy = [r["background_cpu"] for r in rows if r.get("background_cpu") is not None]
    loaded = max(busy) > 0.25 if busy else peak_load > 0.5 * (meta["cpus"] or 1)
    bad = [r for r in rows if r.get("rel_err") is not None and not r["rel_err"] <= r["tolerance"]]
    checked = [r for r in rows if r.get("rel_err") is not None]
    lines = [f"# Inference latency by form: ParNet vs ResNets ({'GPU' if kind == 'cuda' else 'CPU'})", "",
             f"- command: `{meta['command']}` (nice {meta['nice']})",
             f"- machine: {gpu}{meta['cpu_model']}, {meta['cpus']} CPUs; flags: {meta['cpu_flags'] or 'n/a'}",
             f"- torch {meta['torch_version']}, {meta['platform']}, date {meta['date']}; the run took "
             f"{meta['elapsed_s'] / 60:.1f} min",
             *([f"- **partial**: the run stopped after {meta['models_done']} of {meta['models']} models; its roof "
                "is the one measured at the start and its rows were not checked against a final one"]
               if meta.get("models_done", meta.get("models")) != meta.get("models") else []),
             f"- load average (1, 5, 15 min) at the start {', '.join(f'{v:.2f}' for v in meta['loadavg'])}, at the "
             f"end {', '.join(f'{v:.2f}' for v in meta['loadavg_after'])} (the machine is shared; each row records "
             "its section's 1-min load before and after)",
             *(["- timing: the models of a suite (224, then 28) side by side, every form of every model in the "
                "same interleaved rounds"] if meta.get("interleaved") else
               ["- timing: one model after another, the forms of a model in interleaved rounds"]),
             f"- threads: {meta['threads']} intra-op unless a row says 1; batch sizes "
             f"{sorted({r['infer_batch_size'] for r in rows})}; untrained weights (random BN statistics do not "
             "change the time)",
             *([f"- **Measured under load**: the 1-min load average reached {peak_load:.1f} on {meta['cpus']} CPUs, "
                f"other processes kept up to {max(busy or [0]):.0%} of the CPUs busy before a timing. Forms on 2 intra-op threads suffer most (an OpenMP team waits for a thread that "
                "has lost its core); one-thread forms and ONNX Runtime least. Read the ratios within a model as the "
                "ranking under contention, not as idle-machine latencies, and re-run on a quiet machine before "
                "quoting absolute times."] if loaded else
               [f"- other processes kept at most {max(busy):.0%} of the CPUs busy before each timing (the load "
                "average includes this benchmark's own threads)"] if busy else []),
             f"- roof (nondeep.inference.roof, measured before and after the run, best of 10 calls for the large "
             f"kernels and 30 for the short ones, GFLOP/s): {roof}. A row's roof is the highest "
             "rate measured in its precision or a more precise one; roof_fraction = achieved / roof, <= 1 by "
             "construction (checked: nondeep.bench.check_row).",
             f"- output checks: {len(checked) - len(bad)} of {len(checked)} form rows within tolerance of the fused "
             f"float32 eager model (relative error; tolerances {results['tolerance']})", "",
             "## Targets", "", format_table(targets(results)), "",
             "## Fastest form per model", "", format_table(summary_rows(rows)), "",
             "## Published accuracy, measured latency", "",
             f"ImageNet top-1 as published (not measured here) against the batch-1 latency measured in this run, "
             f"in each model's fastest form that passed its output check ({headline_png(results)}):", "",
             format_table(headline(rows)), "",
             "## Every row", "", format_table(rows, COLUMNS), ""]
    if bad:
        lines += ["## Output checks that failed", "", format_table(bad, COLUMNS + ["tolerance"]), ""]
    if results["failures"]:
        lines += ["## Forms that failed to build", "", format_table(results["failures"]), ""]
    lines += ["## Notes", "",
              "- Forms of one model are timed side by side; models one after another, so compare models with "
              "the load average of their rows in mind. Within a model, forms that share a thread regime are "
              "interleaved call by call; sections with other thread settings take turns round by round.",
              "- `streams_over_fastest_sequential` < 1 means the stream-parallel form beats the fastest form that "
              "runs the streams one after another.", ""]
    return "\n".join(lines)


def _stem(results: dict[str, Any]) -> str:
    return "latency-gpu" if results["rows"][0]["device"].startswith("cuda") else "latency"


def headline_png(results: dict[str, Any]) -> str:
    return f"{_stem(results)}-headline.png"


def write_report(results: dict[str, Any], out: Path) -> None:
    write_text(out / f"{_stem(results)}.md", markdown(results))
    if headline(results["rows"]):
        plot_headline(results, out / headline_png(results))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--out", default="docs/results", help="folder for latency[-gpu].json and .md")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all CPUs on a CPU run)")
    p.add_argument("--models-224", nargs="*", help="models at 3x224x224 (default: the device's preset)")
    p.add_argument("--models-28", nargs="*", help=f"models at 1x28x28 (default: {' '.join(MODELS_28)})")
    p.add_argument("--compile-models", nargs="*", default=None,
                   help="models that also get the compiled form (CPU: compiled; GPU: compiled_graph in float16); "
                   "default parnet_s, parnet_tiny and preact_resnet_20 on a CPU, parnet_s on a GPU")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="default: 1 on a CPU, 1 64 on a GPU")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 30 CPU, 60 GPU)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--render", metavar="JSON", help="re-write the markdown from a JSON this script wrote")
    args = p.parse_args(argv)
    kind = torch.device(args.device).type
    stem = "latency-gpu" if kind == "cuda" else "latency"
    out = Path(args.out)
    if args.render:
        write_report(json.loads(Path(args.render).read_text()), out)
        return 0
    args.threads = args.threads or (os.cpu_count() if kind == "cpu" else torch.get_num_threads())
    args.models_224 = MODELS_224[kind] if args.models_224 is None else args.models_224
    args.models_28 = MODELS_28 if args.models_28 is None else args.models_28
    if args.compile_models is None:  # each compile takes ~1 min (a GPU host) to minutes (2 busy cores)
        args.compile_models = ["parnet_s"] if kind == "cuda" else ["parnet_s", "parnet_tiny", "preact_resnet_20"]
    args.repeats = args.repeats or (60 if kind == "cuda" else 30)
    torch.manual_seed(0)
    partial = out / f"{stem}-partial.json"  # after each suite: what a run cut short (a timeout) measured
    results = run(args, progress=lambda so_far: write_json(partial, so_far))
    write_json(out / f"{stem}.json", results)
    write_report(results, out)
    partial.unlink(missing_ok=True)
    log(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
