"""`nondeep lab mimic`: Ba & Caruana's claim ("a shallow net trained on a deep teacher's logits gets close
to the teacher and beats the same net trained on the labels") tested on Fashion-MNIST.

1. The teacher: an ensemble of deep nets (the mean of their logits), trained without label smoothing, or given.
2. The transfer set: the training images plus K augmented copies (crop, flip, erasing); the teacher's logits
   over every view are cached once. Each epoch shows every image once, as one of its K + 1 views, so K buys
   variety of targets, not steps; --teacher-online runs the teacher on every augmented batch instead.
3. Every student is trained on the same views in the same order by each objective: `labels` (cross-entropy,
   the twin), `mimic` (L2 on logits) and `kd` (Hinton's KL at temperature T). The learning rate is chosen per
   student and objective on the validation split, with the first seed; the other seeds use the chosen one.
   A best rate at an edge of the grid widens it past that edge (--lr-widen), so a grid's bounds do not make the choice.
4. How shallow can the student be: conv students with --conv-layers conv layers before the shallow head.
5. K: the first student by mimicry and on labels at each --copies-sweep K, against each other and the lab's K.

The report gives each (student, objective) over the seeds with its 95% interval, each objective against the
labels with a Welch interval and a verdict computed from it, the teacher's accuracy, and the issue's targets
marked met or not from the data.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

from ..stats import estimate
from ..train import TrainConfig
from ._lab import (LR_WIDEN, Budget, LabError, Run, add_common_args, beyond_edge, budget_from_args, lab_folder,
                   on_gpu, run_all)
from ._lab_report import aggregate, lab_report, publish
from ._mimic_report import notes, target_lines

NAME = "mimic"
OBJECTIVES: dict[str, dict[str, Any]] = {"labels": {"loss": "mimic", "alpha": 0.0},  # the teacher unread
                                         "mimic": {"loss": "mimic", "alpha": 1.0},
                                         "kd": {"loss": "kd", "alpha": 1.0}}
# The Ba & Caruana students' recipe: AdamW, as the 8000-unit layer fed by a linear bottleneck is unstable under
# the conv nets' SGD lr 0.2; configs/mimic_snn.yaml holds the same (a test keeps them equal). Other students
# (ParNet) keep nondeep's default recipe. The learning rate is searched per objective on validation.
MIMIC_RECIPE: dict[str, Any] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-4, "schedule": "cosine",
                                "warmup_epochs": 0.0, "label_smoothing": 0.0, "batch_size": 128}
SHALLOW_LRS = (5e-4, 1e-3, 2e-3)
DEFAULT_LR = TrainConfig.lr
OTHER_LRS = (0.1, 0.2, 0.4)
TEACHER_RECIPE: dict[str, Any] = {"label_smoothing": 0.0}  # smoothing compresses the logits a mimic regresses
# (CPU, GPU) defaults: what 2 cores finish in about two hours, and the converged design a GPU makes cheap. K = 0:
# at 10 and at 30 epochs every augmented copy tried (K = 1, 2, 10) lowered the SNN's mean test accuracy, by
# mimicry and on labels (docs/results/mimic.md, mimic-30ep-k2.md, mimic-snn30.md), so K = 0 is the lab's set and
# the copies are its sweep.
DEFAULTS = {"teacher_models": (["preact_resnet_20"] * 3, ["wrn_16_4"] * 5), "teacher_epochs": (5, 40),
            "students": (["mimic_snn_8k"], ["mimic_snn_8k", "mimic_cnn_8k", "parnet_tiny"]),
            "copies_sweep": ([1], [1, 10]),
            "conv_layers": ([], [2, 3])}
CPU_EPOCHS = 4  # the students' epochs on a CPU; on a GPU the labs' GPU_BUDGET
TARGETS = {"teacher_accuracy": 94.5, "shallow_gain_points": 1.0}
COLUMNS = ["model", "objective", "lr", "transfer_copies", "depth", "params", "mflops", "steps", "seeds",
           "test_accuracy", "ci95", "gap_to_teacher", "teacher_agreement", "chosen_on_val_test_accuracy",
           "converged"]


def is_shallow(model: str) -> bool:
    """Ba & Caruana's students (MIMIC_RECIPE, SHALLOW_LRS); every other model keeps nondeep's recipe."""
    return model.startswith("mimic_")


def recipe_for(model: str, lr: float) -> dict[str, Any]:
    """The Ba & Caruana students get MIMIC_RECIPE; every other model nondeep's default; both at `lr`."""
    return {**(MIMIC_RECIPE if is_shallow(model) else {}), "lr": lr}


@dataclasses.dataclass(frozen=True)
class Student:
    """One student architecture of the lab: a registered model and its keyword arguments under `label`, and
    the objectives it is taught by."""
    label: str
    model: str
    objectives: tuple[str, ...]
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)


def conv_student(layers: int, objectives: Sequence[str]) -> Student:
    """The depth study's student: `layers` conv layers before the shallow head, by mimicry and on labels."""
    taught = tuple(o for o in ("labels", "mimic") if o in objectives)
    return Student(f"mimic_cnn_8k conv{layers}", "mimic_cnn_8k", taught, {"conv_layers": layers})


def student_runs(student: Student, objective: str, lrs: Sequence[float], teaching: dict[str, Any],
                 copies: int | str, recipe: dict[str, Any], name: str | None = None) -> list[Run]:
    """One Run per learning rate of `student` taught by `objective`; `teaching` holds distill's other options,
    `recipe` training options shared by every student (the transfer set's erasing)."""
    name = name or f"{student.label} {objective}"
    return [Run(f"{name} lr={lr:g}", student.model, student.model_kwargs,
                {"group": name, "student": student.label, "objective": objective, "lr": lr,
                 "transfer_copies": copies}, recipe={**recipe_for(student.model, lr), **recipe},
                distill={**teaching, **OBJECTIVES[objective]})
            for lr in lrs]


def lr_grid(student: Student, lrs: Sequence[float] | None, search: bool) -> tuple[float, ...]:
    """The rates searched for `student`: `lrs`, else its family's grid; without a search, its recipe's rate."""
    if not search:
        return (MIMIC_RECIPE["lr"] if is_shallow(student.model) else DEFAULT_LR,)
    return tuple(lrs or (SHALLOW_LRS if is_shallow(student.model) else OTHER_LRS))


def at_lr(run: Run, group: str, lr: float) -> Run:
    """`run` (one rate of `group`) at another learning rate."""
    return dataclasses.replace(run, label=f"{group} lr={lr:g}", columns={**run.columns, "lr": lr},
                               recipe={**run.recipe, "lr": lr})


def train_teachers(folder: Path, models: Sequence[str], epochs: int, budget: Budget) -> list[dict[str, Any]]:
    """Each ensemble member trained once (seed + its index), without label smoothing; their rows."""
    runs = [Run(f"teacher-{model}-{i}", model, seed_offset=i, recipe={**TEACHER_RECIPE, "epochs": epochs})
            for i, model in enumerate(models)]
    return run_all(folder, runs, dataclasses.replace(budget, seeds=1))


def _best(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda r: (r["val_accuracy"], -r["lr"]))  # a tie goes to the smaller lr


def chosen_by_validation(folder: Path, groups: dict[str, list[Run]], budget: Budget, widen: int = LR_WIDEN
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every (group, lr) with the first seed; where a group's best rate is at an edge of its grid, up to `widen`
    more rates past that edge, one at a time; per group the lr of the highest final validation accuracy, then
    that lr with the other seeds. Returns (the chosen runs' rows over all seeds, the search's rows)."""
    first = dataclasses.replace(budget, seeds=1)
    search = run_all(folder, [run for runs in groups.values() for run in runs], first)
    for _ in range(widen):
        wider = []
        for name, runs in groups.items():
            rows = [r for r in search if r["group"] == name]
            lr = beyond_edge([r["lr"] for r in rows], _best(rows)["lr"])
            if lr is not None:
                runs.append(at_lr(runs[0], name, lr))
                wider.append(runs[-1])
        if not wider:
            break
        search += run_all(folder, wider, first)
    order = list(groups)
    search.sort(key=lambda r: (order.index(r["group"]), r["lr"]))
    chosen: list[Run] = []
    kept: list[dict[str, Any]] = []
    for name, runs in groups.items():
        rows = [r for r in search if r["group"] == name]
        best = _best(rows)
        for row in rows:
            row["chosen"] = row is best
        kept.append(best)
        chosen.append(next(run for run in runs if run.columns["lr"] == best["lr"]))
    rest = (run_all(folder, chosen, dataclasses.replace(budget, seed=budget.seed + 1, seeds=budget.seeds - 1))
            if budget.seeds > 1 else [])
    return kept + rest, search


def run_mimic_lab(out: str | Path | None = None, budget: Budget | None = None, teachers: Sequence[str] = (),
                  teacher_models: Sequence[str] | None = None, teacher_epochs: int | None = None,
                  students: Sequence[str] | None = None, objectives: Sequence[str] = tuple(OBJECTIVES),
                  conv_layers: Sequence[int] | None = None, transfer_copies: int = 0,
                  copies_sweep: Sequence[int] | None = None, teacher_online: bool = False,
                  temperature: float = 4.0, cutout: int = 8, lrs: Sequence[float] | None = None,
                  lr_search: bool = True, lr_widen: int = LR_WIDEN, results: str | None = None,
                  command: Sequence[str] = ("nondeep", "lab", NAME)) -> tuple[dict[str, Any], Path]:
    """Run the lab (defaults: DEFAULTS for the budget's device); write mimic.json/.md/.png under the lab folder
    and `results`. `lrs`: the rates searched for every student (default: SHALLOW_LRS or OTHER_LRS by student);
    lr_search=False: each student at its recipe's rate (smoke runs); `lr_widen`: rates tried past a grid's edge
    where the best sits. Returns (report, folder)."""
    budget = budget or Budget()
    gpu = on_gpu(budget.device)
    def pick(value: Sequence[Any] | None, key: str) -> list[Any]:
        return list(value) if value is not None else DEFAULTS[key][gpu]
    teacher_models, students = pick(teacher_models, "teacher_models"), pick(students, "students")
    conv_layers = pick(conv_layers, "conv_layers")
    # online, the teacher sees every augmented batch: there are no cached copies to sweep unless asked (an error)
    copies_sweep = [] if teacher_online and copies_sweep is None else pick(copies_sweep, "copies_sweep")
    teacher_epochs = teacher_epochs or DEFAULTS["teacher_epochs"][gpu]
    copies = 0 if teacher_online else transfer_copies
    check_options(objectives, copies_sweep, teacher_online, teachers or teacher_models, students, lr_widen)
    started = time.perf_counter()
    folder = lab_folder(out, NAME)
    budget = dataclasses.replace(budget, data="fashion-mnist")

    teacher_rows = [] if teachers else train_teachers(folder, teacher_models, teacher_epochs, budget)
    paths = list(teachers) or [row["checkpoint"] for row in teacher_rows]
    recipe = {"cutout": cutout}  # the erasing of the transfer copies (and of online batches)
    teaching = {"teachers": paths, "temperature": temperature, "teacher_online": teacher_online,
                "transfer_copies": copies, "cache_dir": str(folder / "teacher-logits")}
    shown_copies: int | str = "online" if teacher_online else copies
    roster = [Student(s, s, tuple(objectives)) for s in students] + [conv_student(n, objectives) for n in conv_layers]
    groups = {f"{s.label} {o}": student_runs(s, o, lr_grid(s, lrs, lr_search), teaching, shown_copies, recipe)
              for s in roster for o in s.objectives}
    per_seed, search = chosen_by_validation(folder, groups, budget, lr_widen)

    main = roster[0]
    # the K sweep: the first student by mimicry and its label twin at each K, each at the rate chosen at the lab's K
    chosen = {r["objective"]: r["lr"] for r in per_seed if r["student"] == main.label}
    sweep_groups = [student_runs(main, o, [chosen[o]], {**teaching, "transfer_copies": k}, k, recipe,
                                 name=f"{main.label} {o} K={k}")
                    for k in copies_sweep for o in ("labels", "mimic") if "mimic" in objectives]
    per_seed += run_all(folder, [run for runs in sweep_groups for run in runs], budget) if sweep_groups else []

    for row in per_seed:
        row["model"] = row["group"]  # the table's unit: (student, objective[, K]) at its chosen lr
    teacher = describe_teacher(teacher_rows, per_seed, paths)
    rows = aggregate(per_seed, extra_columns=["student", "objective", "lr", "transfer_copies"])
    for row in rows:
        runs = [r for r in per_seed if r["model"] == row["model"]]
        row["gap_to_teacher"] = teacher["test_accuracy"] - row["test_accuracy"]
        row["teacher_agreement"] = estimate([r["teacher_agreement"] for r in runs]).mean
    pairs = comparison_pairs(roster, copies_sweep, shown_copies)
    flags = [*command, *budget.flags(), *_flags(teachers, teacher_models, teacher_epochs, students, objectives,
                                                 conv_layers, copies, copies_sweep, teacher_online, temperature,
                                                 cutout, lrs, lr_search, lr_widen)]
    unlisted = [*teacher_rows, *(r for r in search if not r["chosen"])]  # runs the report's "runs" leave out
    report = lab_report(NAME, budget, flags, started, per_seed, rows, pairs, teacher=teacher,
                        other_train_seconds=sum(r.get("train_seconds") or 0.0 for r in unlisted),
                        teacher_epochs=None if teachers else teacher_epochs,
                        transfer_copies=shown_copies, copies_sweep=copies_sweep, temperature=temperature,
                        cutout=cutout, lr_widen=lr_widen if lr_search else 0,
                        lr_search=[_search_row(r) for r in search],
                        recipes={"shallow": MIMIC_RECIPE, "other": "TrainConfig defaults", "teacher": TEACHER_RECIPE})
    report["targets"] = check_targets(report, roster[0].label)
    write_report(report, folder, results)
    return report, folder


def write_report(report: dict[str, Any], folder: Path, results: str | None = None) -> None:
    """mimic.json, .md, .png and -curves.png from the report (under `folder`, and `results`)."""
    publish(report, folder, results, "Mimic learning: shallow students on a deep teacher's logits (nondeep lab "
            "mimic)", COLUMNS, notes(report),
            plot=dict(x="params", y="test_accuracy", logx=True, title="Fashion-MNIST: students by objective",
                      xlabel="parameters", ylabel="test accuracy (%), mean ± 95% CI"))


def check_options(objectives: Sequence[str], copies_sweep: Sequence[int], online: bool, teachers: Sequence[str],
                  students: Sequence[str], lr_widen: int = 0) -> None:
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown or not objectives:
        raise LabError(f"--objectives must be among {', '.join(OBJECTIVES)}, got {' '.join(objectives) or 'none'}")
    if "labels" not in objectives:
        raise LabError("--objectives must include labels: every objective is compared with its label-trained twin")
    if any(k < 0 for k in copies_sweep):
        raise LabError(f"--copies-sweep values must be >= 0, got {list(copies_sweep)}")
    if online and copies_sweep:
        raise LabError("--copies-sweep compares cached transfer sets; with --teacher-online pass --copies-sweep "
                       "with no values")
    if lr_widen < 0:
        raise LabError(f"--lr-widen must be >= 0 (0: the grid alone), got {lr_widen}")
    if not teachers or not students:
        raise LabError("the lab needs at least one teacher (--teacher or --teacher-models) and one --students")


def describe_teacher(teacher_rows: Sequence[dict[str, Any]], per_seed: Sequence[dict[str, Any]],
                     paths: Sequence[str]) -> dict[str, Any]:
    """The ensemble's accuracy (from the students' runs, which score its logits) and its members'."""
    first = per_seed[0]
    return {"checkpoints": list(paths), "members": [
        {k: r[k] for k in ("model", "seed", "test_accuracy", "val_accuracy", "depth", "params", "epochs_trained",
                           "train_seconds") if k in r} for r in teacher_rows],
        "test_accuracy": first["teacher_test_accuracy"], "val_accuracy": first["teacher_val_accuracy"]}


def comparison_pairs(roster: Sequence[Student], copies_sweep: Sequence[int], copies: int | str
                     ) -> list[tuple[str, str]]:
    """Per student each objective against its label twin (and mimic against kd); at each K of the sweep mimicry
    against its label twin, and each of the two against itself at the lab's K (what the copies buy each)."""
    pairs = []
    for s in roster:
        pairs += [(f"{s.label} {o}", f"{s.label} labels") for o in s.objectives if o != "labels"]
        if {"mimic", "kd"} <= set(s.objectives):
            pairs.append((f"{s.label} mimic", f"{s.label} kd"))
    if "mimic" in roster[0].objectives:
        for k in copies_sweep:
            pairs.append((f"{roster[0].label} mimic K={k}", f"{roster[0].label} labels K={k}"))
            if k != copies:
                pairs += [(f"{roster[0].label} {o}", f"{roster[0].label} {o} K={k}") for o in ("mimic", "labels")
                          if o in roster[0].objectives]
    return pairs


def _comparison(report: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    return next((c for c in report["comparisons"] if (c["a"], c["b"]) == (a, b)), None)


def check_targets(report: dict[str, Any], main: str) -> list[dict[str, Any]]:
    """The issue's targets, each computed from the report and marked met or not, whatever the numbers are: the
    teacher's accuracy; Ba & Caruana's gain for `main` when it is a shallow student; every other student by
    mimicry at or above its label twin."""
    teacher = report["meta"]["teacher"]["test_accuracy"]
    checks = [{"target": f"teacher ensemble >= {TARGETS['teacher_accuracy']}% test accuracy",
               "value": round(teacher, 2), "met": teacher >= TARGETS["teacher_accuracy"]}]
    gain = _comparison(report, f"{main} mimic", f"{main} labels")
    if gain and is_shallow(main):
        checks.append({"target": f"{main} by mimicry >= {TARGETS['shallow_gain_points']} point above {main} on labels, "
                                 "interval excluding 0", "value": _difference_text(gain),
                       "met": gain["diff"] >= TARGETS["shallow_gain_points"] and gain["low"] is not None
                       and gain["low"] > 0})
    for row in report["rows"]:
        if row["objective"] == "mimic" and not is_shallow(row["student"]) and "K=" not in row["model"]:
            twin = _comparison(report, row["model"], f"{row['student']} labels")
            if twin:
                checks.append({"target": f"{row['student']} by mimicry at or above its label twin",
                               "value": _difference_text(twin), "met": twin["diff"] >= 0})
    return checks


def _difference_text(c: dict[str, Any]) -> str:
    interval = "" if c["low"] is None else f", 95% CI [{c['low']:+.2f}, {c['high']:+.2f}]"
    return f"{c['diff']:+.2f} points{interval}"


def _search_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("group", "lr", "seed", "val_accuracy", "chosen", "train_seconds")}


def _flags(teachers: Sequence[str], teacher_models: Sequence[str], teacher_epochs: int, students: Sequence[str],
           objectives: Sequence[str], conv_layers: Sequence[int], copies: int, copies_sweep: Sequence[int],
           online: bool, temperature: float, cutout: int, lrs: Sequence[float] | None, search: bool,
           widen: int) -> list[str]:
    """The lab's own flags, to reproduce the run."""
    parts = (["--teacher", *teachers] if teachers else
             ["--teacher-models", *teacher_models, "--teacher-epochs", str(teacher_epochs)])
    parts += ["--students", *students, "--objectives", *objectives, "--conv-layers", *map(str, conv_layers),
              "--copies-sweep", *map(str, copies_sweep), "--temperature", f"{temperature:g}", "--cutout", str(cutout)]
    parts += ["--teacher-online"] if online else ["--transfer-copies", str(copies)]
    parts += ["--lrs", *(f"{lr:g}" for lr in lrs)] if lrs else []
    return parts + (["--lr-widen", str(widen)] if search else ["--no-lr-search"])


def cmd_mimic(args: argparse.Namespace) -> None:
    budget = budget_from_args(args)
    report, folder = run_mimic_lab(
        out=args.out, budget=budget, teachers=args.teacher or (), teacher_models=args.teacher_models,
        teacher_epochs=args.teacher_epochs or (1 if args.quick else None), students=args.students,
        objectives=args.objectives, conv_layers=args.conv_layers, transfer_copies=args.transfer_copies,
        copies_sweep=args.copies_sweep, teacher_online=args.teacher_online, temperature=args.temperature,
        cutout=args.cutout, lrs=args.lrs, lr_search=args.lr_search and not args.quick, lr_widen=args.lr_widen,
        results=args.results)
    print(f"teacher: {report['meta']['teacher']['test_accuracy']:.2f}% test")
    for line in target_lines(report):
        print(line)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="Ba & Caruana: students taught by a deep ensemble's logits (L2, KD) vs on labels, "
                       "each learning rate chosen on validation, over seeds (CPU default: about 2 h on 2 cores)")
    p.add_argument("--teacher", nargs="+", metavar="CKPT", help="use these checkpoints as the teacher ensemble")
    p.add_argument("--teacher-models", nargs="+", help="ensemble members to train (default: 3 x preact_resnet_20 on "
                   "a CPU, 5 x wrn_16_4 on a GPU)")
    p.add_argument("--teacher-epochs", type=int, help="epochs of each member (default: 5 on a CPU, 40 on a GPU)")
    p.add_argument("--students", nargs="+", help="student models (default: mimic_snn_8k on a CPU; mimic_snn_8k "
                   "mimic_cnn_8k parnet_tiny on a GPU)")
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES),
                   help="labels (cross-entropy), mimic (L2 on logits), kd (KL at --temperature) (default: all)")
    p.add_argument("--conv-layers", type=int, nargs="*", help="how shallow: also conv students with this many conv "
                   "layers, by mimicry and on labels (default: none on a CPU, 2 3 on a GPU)")
    p.add_argument("--transfer-copies", type=int, default=0, help="K augmented copies in the transfer set (default: "
                   "%(default)s, measured best for the SNN: docs/results/mimic-snn30.md)")
    p.add_argument("--copies-sweep", type=int, nargs="*", help="also the first student by mimicry and on labels at "
                   "these K (default: 1 on a CPU, 1 10 on a GPU; none with --teacher-online)")
    p.add_argument("--teacher-online", action="store_true", help="run the teacher on every augmented batch instead "
                   "of caching its logits over K copies")
    p.add_argument("--temperature", type=float, default=4.0, help="kd temperature (default: %(default)s)")
    p.add_argument("--cutout", type=int, default=8, help="erasing square of the transfer copies (default: %(default)s)")
    p.add_argument("--lrs", type=float, nargs="+", help=f"learning rates searched for every student (default: "
                   f"{' '.join(map(str, SHALLOW_LRS))} for the mimic_* students, {' '.join(map(str, OTHER_LRS))} "
                   "for the others)")
    p.add_argument("--lr-search", action=argparse.BooleanOptionalAction, default=True, help="choose each "
                   "student's rate on validation (--no-lr-search and --quick: its recipe's rate)")
    p.add_argument("--lr-widen", type=int, default=LR_WIDEN, metavar="N", help="where the best rate is at an edge "
                   "of the grid, try up to N more past that edge, one at a time, the grid's ratio continued "
                   "(default: %(default)s; 0: the grid alone)")
    add_common_args(p, NAME, epochs=CPU_EPOCHS, max_train_samples=0, latency=False)
    p.set_defaults(func=cmd_mimic)
