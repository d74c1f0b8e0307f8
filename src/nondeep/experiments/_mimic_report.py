"""The mimic lab's report text: its targets' lines and the notes on the teacher, the transfer set and the
learning-rate search, all written from the report itself."""

from __future__ import annotations

from typing import Any, Sequence

from ..report import format_table


def target_lines(report: dict[str, Any]) -> list[str]:
    return [f"{'MET' if t['met'] else 'NOT MET'}: {t['target']} (measured: {t['value']})" for t in report["targets"]]


def notes(report: dict[str, Any]) -> str:
    """The teacher, the transfer set, the learning-rate search and the targets, as the report's text."""
    meta, teacher = report["meta"], report["meta"]["teacher"]
    members = ", ".join(f"{m['model']} seed {m['seed']} {m['test_accuracy']:.2f}%" for m in teacher["members"])
    made = (f"an ensemble of {len(teacher['members'])} net(s) trained here without label smoothing "
            f"({meta['teacher_epochs']} epochs each; test accuracy {members})" if teacher["members"]
            else f"the given checkpoint(s) {', '.join(teacher['checkpoints'])}")
    copies = meta["transfer_copies"]
    transfer = ("the teacher runs on every augmented batch (--teacher-online)" if copies == "online" else
                f"the training images and {copies} augmented copies (crop, flip, erasing of {meta['cutout']} px), "
                "the teacher's logits cached once; each epoch shows every image once, as one of its views")
    search = format_table(meta["lr_search"], ["group", "lr", "val_accuracy", "chosen"]) + _edge_note(meta["lr_search"])
    return (f"## Teacher\n\nThe teacher is {made}. The mean of the members' logits scores "
            f"{teacher['test_accuracy']:.2f}% on the test split and {teacher['val_accuracy']:.2f}% on validation. "
            f"gap_to_teacher = its test accuracy minus the student's mean; teacher_agreement: % of validation "
            f"images on which the student's class is the teacher's.\n\n## Transfer set\n\nEvery student, on every "
            f"objective, trains on {transfer}: the label twin sees the same images in the same order. kd uses "
            f"temperature {meta['temperature']:g}.\n\n## Learning rate, chosen on validation\n\nEach (student, "
            f"objective) trained at every rate with the first seed{_widen_text(meta)}; the rate of the highest "
            f"final validation accuracy was kept and run with the other seeds. The K sweep runs each objective at "
            f"the rate chosen for it at the lab's K.\n\n{search}\n\n## Targets\n\n"
            + "\n".join(f"- {line}" for line in target_lines(report)))


def _widen_text(meta: dict[str, Any]) -> str:
    widen = meta.get("lr_widen", 0)  # absent in reports written before the grid widened itself
    return (f" (where the best rate was at an edge of the grid, up to {widen} more rate(s) past that edge, one at a "
            "time, the grid's ratio continued)" if widen else "")


def _edge_note(search: Sequence[dict[str, Any]]) -> str:
    """Which groups chose a rate at the edge of their grid (a wider grid might find a better one)."""
    edges = []
    for group in dict.fromkeys(r["group"] for r in search):
        tried = [r for r in search if r["group"] == group]
        chosen = next(r["lr"] for r in tried if r["chosen"])
        if len(tried) > 1 and chosen in (min(r["lr"] for r in tried), max(r["lr"] for r in tried)):
            edges.append(f"{group} ({chosen:g})")
    return ("\n\nChosen at the edge of the grid, so a wider grid might find a better rate: " + ", ".join(edges) + "."
            if edges else "")
