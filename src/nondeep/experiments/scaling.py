"""`nondeep lab scaling`: how to grow a depth-12 network (the ParNet paper's scaling study, on Fashion-MNIST).

From a base ParNet (parnet_tiny) the lab grows one axis at a time to each compute level (default 1x, 2x, 4x
the base's fused FLOPs): width (width_multiplier), input resolution (the images resized up once on load:
FLOPs grow with the pixels), streams (num_streams), and a joint rule that splits the growth of log-FLOPs
between the three in the shares --joint W:R:S sets (compound scaling): streams take the depth-12 stream count
closest to their share, resolution the side closest to its share, and width is then searched to land the
level. Every ParNet must measure depth 12 (traced by nondeep.measure, not declared); the lab refuses one
that does not. The 1x level is the base itself, shared by all ParNet axes and trained once.

The deep reference grows by depth alone: WRN-n-k over n = 6N + 4 at one fixed k, the k that puts the
shallowest (WRN-10) at the base's FLOPs. Not pre-act ResNets: their width is fixed, so their smallest cannot
be put at the base's FLOPs, and the reference curve would not start where the ParNet curves start.

Each (axis, level) takes the knob value whose fused FLOPs (at that model's input size) are closest to level x
base; width, resolution, joint and depth models further than MATCH_TOLERANCE are refused before anything
trains. The stream count is different: in this ParNet each added stream adds a fusion block to every
input-output path (4 streams measure depth 13) and fewer streams measure less (1: 8, 2: 11), so a level no
depth-12 stream count reaches is not trained and the report lists it as unreachable, with the closest.

Report: per model its measured depth, parameters, FLOPs, training steps, batch-1 latency in its fastest form and
test accuracy over seeds (mean, 95% interval); per level, the most accurate axis against the runner-up and
every ParNet axis against the deep reference at that level (Welch intervals, computed verdicts); plots of
accuracy against FLOPs (<lab>.png) and against latency (<lab>-latency.png), one curve per axis.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import measure
from ..models import create_model
from ..plots import plot_fronts
from ..reparam import reparameterize_model
from ..stats import welch
from ._lab import (MATCH_TOLERANCE, Budget, LabError, Run, add_common_args, budget_from_args, check_matched,
                   lab_folder, match_budget, model_cost, on_gpu, run_all)
from ._lab_latency import LATENCY_NOTE, latency_by_model
from ._lab_report import ACCURACY, aggregate, lab_report, publish
from .streams import MULTIPLIER_GRID
from .width_depth import wrn_for_budget

NAME = "scaling"
AXES = ("width", "resolution", "streams", "joint")
DEEP = "depth"                      # the deep reference's axis name
DEFAULT_LEVELS = (1.0, 2.0, 4.0)
DEFAULT_JOINT = "1:1:1"             # width:resolution:streams shares of the growth of log-FLOPs
DEPTH = 12
BASE_SIDE, IN_CHANS, NUM_CLASSES = 28, 1, 10   # Fashion-MNIST
STREAM_COUNTS = range(1, 7)
WRN_DEPTHS = [6 * n + 4 for n in range(1, 60)]  # WRN-10 ... WRN-358
# 2 CPU cores: 15 steps a run left parnet_tiny at chance (10.03%, 2026-11-29); 78 steps (2 epochs on 10,000
# images) at levels 1 and 2 took 87 min for 3 seeds (docs/results/scaling.md). The GPU budget is the answer.
CPU_BUDGET = {"epochs": 2, "max_train_samples": 10000}
CPU_LEVELS = (1.0, 2.0)
COLUMNS = ["model", "axis", "level", "width_multiplier", "image_size", "num_streams", "widen_factor", "depth",
           "params", "mflops", "flops_ratio", "steps", "seeds", "test_accuracy", "ci95",
           "chosen_on_val_test_accuracy", "converged", "latency_ms", "latency_form"]


@dataclass(frozen=True)
class Point:
    """One ParNet of the lab: the base builder at a width multiplier, input side and stream count."""
    width_multiplier: float = 1.0
    image_size: int = BASE_SIDE
    num_streams: int = 3


@functools.lru_cache(maxsize=None)
def _meta_parnet(base: str, width_multiplier: float, num_streams: int) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(base, width_multiplier=width_multiplier, num_streams=num_streams,
                            num_classes=NUM_CLASSES, in_chans=IN_CHANS)


@functools.lru_cache(maxsize=None)
def _meta_fused(base: str, width_multiplier: float, num_streams: int) -> torch.nn.Module:
    return reparameterize_model(_meta_parnet(base, width_multiplier, num_streams)).eval()


@functools.lru_cache(maxsize=None)
def parnet_flops(base: str, point: Point) -> int:
    """Fused FLOPs of one image at the point's side (cost_of("flops"), with the fused meta model kept for the
    other sides the searches try)."""
    return measure.count_flops(_meta_fused(base, point.width_multiplier, point.num_streams),
                               (IN_CHANS, point.image_size, point.image_size))


@functools.lru_cache(maxsize=None)
def parnet_depth(base: str, point: Point) -> int:
    return measure.depth(_meta_parnet(base, point.width_multiplier, point.num_streams),
                         (IN_CHANS, point.image_size, point.image_size))


def input_divisor(base: str, num_streams: int) -> int:
    return int(getattr(_meta_parnet(base, 1.0, num_streams), "input_divisor", 1))


def depth12_stream_counts(base: str, side: int) -> list[int]:
    """The stream counts whose ParNet takes side x side images and measures depth 12."""
    return [n for n in STREAM_COUNTS if side % input_divisor(base, n) == 0
            and parnet_depth(base, Point(num_streams=n, image_size=side)) == DEPTH]


def parse_joint(text: str) -> tuple[float, float, float]:
    """'W:R:S' -> shares of the log-FLOPs growth summing to 1; width's must be > 0 (it lands the level)."""
    try:
        values = tuple(float(v) for v in text.split(":"))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or values[0] <= 0:
        raise LabError(f"--joint takes width:resolution:streams shares such as 1:1:1 or 2:1:0, width above 0 "
                       f"(width is searched to land each level), got {text!r}")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


@dataclass
class Planned:
    """What one (axis, level) trains: a ParNet point or a WRN, its fused FLOPs; `point` None and `reason` set
    when no model reaches the level (the streams axis)."""
    axis: str
    level: float
    flops: int
    point: Point | None = None
    widen_factor: float | None = None
    wrn_depth: int | None = None
    reason: str | None = None
    same_as: str | None = None  # the label of an earlier axis' identical model (trained once)
    base: str = "parnet_tiny"

    @property
    def label(self) -> str | None:
        if self.same_as:
            return self.same_as
        if self.wrn_depth is not None:
            return f"WRN-{self.wrn_depth}-{self.widen_factor:g}"
        if self.point is None or self.reason:
            return None
        p = self.point
        if p == Point():
            return self.base
        return {"width": f"width x{p.width_multiplier:g}", "resolution": f"resolution {p.image_size}px",
                "streams": f"{p.num_streams} streams"}.get(
            self.axis, f"joint x{p.width_multiplier:g} {p.image_size}px {p.num_streams}st")


def _closest(base: str, axis: str, target: int, start: Point, grid: Sequence[Any]) -> tuple[Point, int]:
    field = {"width": "width_multiplier", "resolution": "image_size", "streams": "num_streams"}[axis]
    value, flops = match_budget(lambda v: replace(start, **{field: v}), target, grid,
                                lambda p: parnet_flops(base, p))
    return replace(start, **{field: value}), flops


def _sides(base: str, num_streams: int, top: float) -> list[int]:
    step = input_divisor(base, num_streams)
    return list(range(step, int(BASE_SIDE * math.sqrt(top) * 1.5) + step, step))


def plan_parnet(base: str, axis: str, level: float, joint: tuple[float, float, float]) -> Planned:
    """The ParNet of `axis` closest to `level` x the base's fused FLOPs, refused (LabError) beyond the tolerance."""
    base_flops = parnet_flops(base, Point())
    target = round(level * base_flops)
    if level == 1.0:
        return Planned(axis, level, base_flops, Point(), base=base)
    if axis == "streams":
        counts = depth12_stream_counts(base, BASE_SIDE)
        point, flops = _closest(base, axis, target, Point(), counts)
        if abs(flops - target) > MATCH_TOLERANCE * target:
            return Planned(axis, level, flops, point, base=base, reason=(
                f"no stream count of {base} that measures depth {DEPTH} at {BASE_SIDE}x{BASE_SIDE} (those: "
                f"{counts}) comes within {MATCH_TOLERANCE:.0%} of {level:g}x; the closest, {point.num_streams} "
                f"streams, is {flops / base_flops:.2f}x"))
        return Planned(axis, level, flops, point, base=base)
    if axis == "width":
        point, flops = _closest(base, axis, target, Point(), MULTIPLIER_GRID)
    elif axis == "resolution":
        point, flops = _closest(base, axis, target, Point(), _sides(base, Point().num_streams, level))
    else:  # joint: streams take the depth-12 count closest to their share; what is left of the growth splits
        # between resolution and width in their proportion, and width, searched last, lands the level
        share_width, share_res, share_streams = joint
        counts = depth12_stream_counts(base, BASE_SIDE)
        streams = min(counts, key=lambda n: abs(math.log(parnet_flops(base, Point(num_streams=n)) / base_flops)
                                                 - share_streams * math.log(level)))
        with_streams = parnet_flops(base, Point(num_streams=streams))
        side_target = round(with_streams * (target / with_streams) ** (share_res / (share_res + share_width)))
        start, _ = _closest(base, "resolution", side_target, Point(num_streams=streams),
                            _sides(base, streams, level))
        point, flops = _closest(base, "width", target, start, MULTIPLIER_GRID)
    check_matched(f"{base} grown by {axis} to {level:g}x", flops, target, "flops")
    return Planned(axis, level, flops, point, base=base)


def plan_deep(level: float, base_flops: int, widen_factor: float) -> Planned:
    """The WRN-n-k (k fixed) whose depth brings it closest to `level` x the base's FLOPs."""
    def flops(depth: int) -> int:
        return model_cost("wide_resnet", "flops", (IN_CHANS, BASE_SIDE, BASE_SIDE), depth=depth,
                          widen_factor=widen_factor, num_classes=NUM_CLASSES, in_chans=IN_CHANS)
    target = round(level * base_flops)
    depth, cost = match_budget(lambda d: d, target, WRN_DEPTHS, flops)
    check_matched(f"WRN-n-{widen_factor:g} at {level:g}x", cost, target, "flops")
    return Planned(DEEP, level, cost, widen_factor=widen_factor, wrn_depth=int(depth))


def plan_scaling(base: str = "parnet_tiny", levels: Sequence[float] = DEFAULT_LEVELS, axes: Sequence[str] = AXES,
                 joint: str = DEFAULT_JOINT) -> list[Planned]:
    """Every (axis, level) of the lab and its deep reference, found on the meta device (nothing trains). Every
    ParNet planned is checked to measure depth 12."""
    levels = sorted(set(float(v) for v in levels))
    if not levels or levels[0] < 1.0:
        raise LabError(f"--levels are multiples of the base's FLOPs, 1 or more (e.g. 1 2 4), got {levels}")
    unknown = [a for a in axes if a not in AXES]
    if unknown or not axes:
        raise LabError(f"--axes takes some of {', '.join(AXES)}, got {list(axes)}")
    shares = parse_joint(joint)
    base_flops = parnet_flops(base, Point())
    if parnet_depth(base, Point()) != DEPTH:
        raise LabError(f"{base} measures depth {parnet_depth(base, Point())}, not {DEPTH}: the lab grows a "
                       f"depth-{DEPTH} ParNet")
    plan = [plan_parnet(base, axis, level, shares) for axis in axes for level in levels]
    seen: dict[Point, str] = {}
    for p in plan:
        if p.point is None or p.reason:
            continue
        if parnet_depth(base, p.point) != DEPTH:
            raise LabError(f"{p.label} measures depth {parnet_depth(base, p.point)}, not {DEPTH}")
        if p.point in seen:
            p.same_as = seen[p.point]
        seen.setdefault(p.point, p.label)
    widen_factor, _ = wrn_for_budget(WRN_DEPTHS[0], base_flops, "flops")
    return plan + [plan_deep(level, base_flops, widen_factor) for level in levels]


def realized_shares(base: str, point: Point) -> dict[str, float] | None:
    """How a model's growth of log-FLOPs splits into streams, then resolution, then width (None at 1x)."""
    base_flops, total = parnet_flops(base, Point()), parnet_flops(base, point)
    if total == base_flops:
        return None
    streams = parnet_flops(base, Point(num_streams=point.num_streams))
    res = parnet_flops(base, Point(num_streams=point.num_streams, image_size=point.image_size))
    whole = math.log(total / base_flops)
    return {"width": round(math.log(total / res) / whole, 3), "resolution": round(math.log(res / streams) / whole, 3),
            "streams": round(math.log(streams / base_flops) / whole, 3)}


def runs_of(base: str, plan: Sequence[Planned]) -> list[Run]:
    """One Run per distinct model of the plan (the base, shared by the ParNet axes at 1x, trains once)."""
    runs: dict[str, Run] = {}
    base_flops = parnet_flops(base, Point())
    for p in plan:
        if p.label is None or p.label in runs:
            continue
        columns = {"axis": "base" if p.point == Point() else p.axis, "level": p.level,
                   "flops_ratio": round(p.flops / base_flops, 3)}
        if p.wrn_depth is not None:
            runs[p.label] = Run(p.label, "wide_resnet", {"depth": p.wrn_depth, "widen_factor": p.widen_factor},
                                {**columns, "widen_factor": p.widen_factor})
            continue
        pt = p.point
        runs[p.label] = Run(p.label, base, {"width_multiplier": pt.width_multiplier, "num_streams": pt.num_streams},
                            {**columns, "width_multiplier": pt.width_multiplier, "image_size": pt.image_size,
                             "num_streams": pt.num_streams},
                            recipe={"image_size": pt.image_size} if pt.image_size != BASE_SIDE else {})
    return list(runs.values())


def leaders(plan: Sequence[Planned], per_seed: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level: the axis whose model has the highest mean test accuracy, and its Welch interval against the
    runner-up (another model at that level)."""
    values: dict[str, list[float]] = {}
    for row in per_seed:
        values.setdefault(row["model"], []).append(row[ACCURACY])
    out = []
    for level in sorted({p.level for p in plan}):
        models: dict[str, list[str]] = {}
        for p in plan:
            if p.level == level and p.label is not None:
                models.setdefault(p.label, []).append(p.axis)
        ranked = sorted(models, key=lambda m: -sum(values[m]) / len(values[m]))
        entry = {"level": level, "best": ranked[0], "best_axes": models[ranked[0]],
                 "best_accuracy": sum(values[ranked[0]]) / len(values[ranked[0]])}
        if len(ranked) > 1:
            entry["runner_up"] = ranked[1]
            entry["versus_runner_up"] = welch(values[ranked[0]], values[ranked[1]], ranked[0], ranked[1]).as_dict()
        out.append(entry)
    return out


def pairs_against_depth(plan: Sequence[Planned]) -> list[tuple[str, str]]:
    deep = {p.level: p.label for p in plan if p.axis == DEEP}
    pairs = []
    for p in plan:
        pair = (p.label, deep.get(p.level))
        if p.axis != DEEP and p.label is not None and pair[1] and pair not in pairs:
            pairs.append(pair)
    return pairs


def curve_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per (axis, level) that trained, with its model's FLOPs, latency, accuracy and interval."""
    rows = {r["model"]: r for r in report["rows"]}
    return [{"axis": p["axis"], "level": f"{p['level']:g}x", "mflops": rows[p["model"]]["mflops"],
             "latency_ms": rows[p["model"]].get("latency_ms"), "test_accuracy": rows[p["model"]][ACCURACY],
             "ci95": rows[p["model"]]["ci95"], "joined": True}
            for p in report["plan"] if p["model"] is not None]


def draw(report: dict[str, Any], path: Path) -> None:
    """<lab>.png: accuracy against fused FLOPs; <lab>-latency.png: against batch-1 latency (fastest form)."""
    points = curve_points(report)
    common = dict(y="test_accuracy", yerr="ci95", group="axis", front="joined", annotate="level",
                  ylabel="test accuracy (%), mean ± 95% CI", legend_title="grown by", logx=True)
    plot_fronts(points, x="mflops", path=path, xlabel="fused MFLOPs (one image)",
                title="Growing a depth-12 ParNet vs growing depth (Fashion-MNIST)", **common)
    timed = [p for p in points if p["latency_ms"] is not None]
    plot_fronts(timed, x="latency_ms", path=path.with_name(path.stem + "-latency.png"),
                xlabel="batch-1 latency, fastest form (ms)", title="Accuracy against latency", **common)


def verdict_notes(report: dict[str, Any]) -> str:
    """The markdown the report adds below the table, every figure from the report."""
    lines = ["## Most accurate axis at each compute level", "",
             "| level | most accurate | test accuracy | against the runner-up (Welch 95%) |", "|---|---|---|---|"]
    for entry in report["leaders"]:
        versus = entry.get("versus_runner_up", {}).get("verdict", "no other model at this level")
        lines.append(f"| {entry['level']:g}x | {entry['best']} ({', '.join(entry['best_axes'])}) | "
                     f"{entry['best_accuracy']:.2f} | {versus} |")
    unreachable = [p for p in report["plan"] if p["model"] is None]
    if unreachable:
        lines += ["", "## Levels an axis cannot reach (not trained)", ""]
        lines += [f"- {p['axis']} at {p['level']:g}x: {p['reason']}" for p in unreachable]
    shares = [p for p in report["plan"] if p["axis"] == "joint" and p.get("shares")]
    if shares:
        lines += ["", f"## Joint rule {report['meta']['joint']} (width:resolution:streams), realised shares of "
                  "the growth of log-FLOPs", ""]
        lines += [f"- {p['model']}: " + ", ".join(f"{k} {v:.2f}" for k, v in p["shares"].items()) for p in shares]
    widths = [c["high"] - c["diff"] for c in report["comparisons"] if c.get("high") is not None]
    if widths:
        lines += ["", f"What this budget cannot detect: the Welch intervals against the depth reference have "
                  f"half-widths from {min(widths):.2f} to {max(widths):.2f} points, so smaller differences read "
                  f"as 'no detectable difference'."]
    lines += ["", "Each model is the knob value whose fused FLOPs (one image at its own input size) are closest "
              f"to the level; the tolerance is {MATCH_TOLERANCE:.0%}. Depth is measured (longest conv/linear "
              "path); " + LATENCY_NOTE + ", each at its own input size."]
    return "\n".join(lines)


def run_scaling_lab(out: str | Path | None = None, base: str = "parnet_tiny", levels: Sequence[float] | None = None,
                    axes: Sequence[str] = AXES, joint: str = DEFAULT_JOINT, budget: Budget | None = None,
                    results: str | None = None, command: Sequence[str] = ("nondeep", "lab", NAME)
                    ) -> tuple[dict[str, Any], Path]:
    budget = budget or Budget(**CPU_BUDGET)
    levels = levels or (DEFAULT_LEVELS if on_gpu(budget.device) else CPU_LEVELS)
    started = time.perf_counter()
    plan = plan_scaling(base, levels, axes, joint)  # refuses before anything trains
    runs = runs_of(base, plan)
    folder = lab_folder(out, NAME)
    per_seed = run_all(folder, runs, budget)
    rows = aggregate(per_seed, latency_by_model(per_seed, budget),
                     extra_columns=["axis", "level", "width_multiplier", "image_size", "num_streams", "widen_factor",
                                    "flops_ratio"])
    flags = [*command, "--base", base, "--levels", *(f"{v:g}" for v in levels), "--axes", *axes, "--joint", joint,
             *budget.flags()]
    report = lab_report(NAME, budget, flags, started, per_seed, rows, pairs_against_depth(plan), joint=joint,
                        base_mflops=round(parnet_flops(base, Point()) / 1e6, 2))
    report["plan"] = [{"axis": p.axis, "level": p.level, "model": p.label, "mflops": round(p.flops / 1e6, 2),
                       "reason": p.reason, "shares": realized_shares(base, p.point) if p.axis == "joint" else None}
                      for p in plan]
    report["leaders"] = leaders(plan, per_seed)
    publish(report, folder, results, "Growing a depth-12 ParNet by width, resolution, streams vs by depth "
            "(nondeep lab scaling)", COLUMNS, verdict_notes(report), plot=draw)
    return report, folder


def cmd_scaling(args: argparse.Namespace) -> None:
    run_scaling_lab(out=args.out, base=args.base, levels=args.levels, axes=args.axes, joint=args.joint,
                    budget=budget_from_args(args), results=args.results)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="grow a depth-12 ParNet by width, resolution, streams (and jointly) vs a WRN "
                                  "grown by depth, at 1x, 2x (and 4x on a GPU) its FLOPs, over seeds")
    p.add_argument("--base", default="parnet_tiny", help="the depth-12 ParNet builder grown (default: %(default)s)")
    p.add_argument("--levels", type=float, nargs="+",
                   help="compute levels, multiples of the base's fused FLOPs (default: 1 2 4 on a GPU, 1 2 on a "
                        "CPU)")
    p.add_argument("--axes", nargs="+", choices=AXES, default=list(AXES), help="ParNet axes (default: all)")
    p.add_argument("--joint", default=DEFAULT_JOINT,
                   help="width:resolution:streams shares of the joint rule's growth of log-FLOPs (default: "
                        "%(default)s)")
    add_common_args(p, NAME, **CPU_BUDGET)
    p.set_defaults(func=cmd_scaling)
