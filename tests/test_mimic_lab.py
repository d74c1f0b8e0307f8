"""The mimic lab (issue 15) on the tiny synthetic set: the transfer set's views, online and cached teacher targets,
the label twin's images, the learning rate chosen on validation, seeds with intervals and verdicts, resuming,
and the refusals."""

import json

import pytest
import torch

from nondeep.cli import main
from nondeep.data import Augment, TensorLoader, build_loaders
from nondeep.distill import CachedTargets, DistillLoss, OnlineTeacher, build_ensemble, distill, read_teachers
from nondeep.distill.teacher import logits_over_images
from nondeep.distill.transfer import TransferData, make_transfer_set
from nondeep.experiments._lab import Budget, LabError, beyond_edge
from nondeep.experiments.mimic import check_targets
from nondeep.stats import welch
from nondeep.train import TrainConfig, train


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    torch.set_num_threads(1)  # tiny models: one thread is as fast and immune to a busy machine


def _cfg(data_dir, out, **kw):
    base = dict(model="mimic_snn_1k", data_dir=str(data_dir), out=str(out), epochs=1, batch_size=64,
                optimizer="adamw", lr=1e-3, schedule="cosine", label_smoothing=0.0, progress=False, num_workers=0,
                flip=False, crop_padding=0, model_kwargs={"bottleneck": 32})
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def teachers(tiny_fashion, tmp_path_factory):
    """Two quickly trained shallow teachers: an ensemble."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = []
    for seed in (0, 1):
        train(_cfg(tiny_fashion, folder / f"t{seed}", epochs=2, seed=seed))
        paths.append(str(folder / f"t{seed}" / "last.safetensors"))
    return paths


def test_views_serve_each_sample_once_per_epoch_as_one_of_its_views():
    n, views = 40, 3
    images = torch.arange(n * views, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    labels = torch.arange(n).repeat(views)
    loader = TensorLoader(images, labels, 8, (0.0,), (1 / 255,), shuffle=True, with_indices=True, views=views, seed=3)
    plain = TensorLoader(images[:n], labels[:n], 8, (0.0,), (1 / 255,), shuffle=True)
    assert len(loader) == len(plain) == 5  # the views add variety, not steps
    chosen = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        batches = list(loader)
        idx = torch.cat([b[2] for b in batches])
        assert sorted((idx % n).tolist()) == list(range(n))  # every sample once
        for x, y, i in batches:  # the image and label served are those of the index yielded
            assert torch.equal(x[:, 0, 0, 0].round().long(), i) and torch.equal(y, labels[i])
        chosen.append(idx // n)
        loader.set_epoch(epoch)
        assert torch.equal(torch.cat([b[2] for b in loader]), idx)  # an epoch replays exactly
    assert {v for c in chosen for v in c.tolist()} == {0, 1, 2} and not torch.equal(chosen[0], chosen[1])
    with pytest.raises(ValueError, match="equal views"):
        TensorLoader(images[:-1], labels[:-1], 8, (0.0,), (1.0,), views=views)


def test_online_and_cached_teacher_targets_agree_for_the_same_augmented_batch(tiny_fashion, teachers):
    train_loader, _, info = build_loaders("fashion-mnist", data_dir=str(tiny_fashion), augment=Augment.off())
    augment = Augment(crop_padding=2, flip=True, cutout=6)
    images, labels = make_transfer_set(train_loader.images, train_loader.labels, 2, augment, info.mean, seed=0)
    ensemble = build_ensemble(read_teachers(teachers, info))
    cached = CachedTargets(logits_over_images(ensemble, images, info.mean, info.std, batch_size=256))
    online = OnlineTeacher(ensemble)
    data = TransferData(images, labels, images[:8], labels[:8], info, 64, 64, seed=0, views=3)
    loader, _, _ = data(torch.device("cpu"), 0, 1)
    loader.set_epoch(1)
    for x, _, idx in list(loader)[:3]:
        assert (idx >= len(train_loader.labels)).any()  # augmented views are in the batch
        torch.testing.assert_close(cached(idx, x), online(None, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [{"transfer_copies": 1}, {"teacher_online": True}], ids=["cached", "online"])
def test_the_label_twin_sees_the_mimic_students_images_in_the_same_order(tiny_fashion, teachers, tmp_path,
                                                                         monkeypatch, mode):
    seen: list[list[torch.Tensor]] = []
    real = DistillLoss.__call__

    def recording(self, logits, labels, indices, images):
        seen[-1].append(images.clone())
        return real(self, logits, labels, indices, images)

    monkeypatch.setattr(DistillLoss, "__call__", recording)
    for alpha in (1.0, 0.0):  # the mimic student, then its twin on the labels
        seen.append([])
        cfg = _cfg(tiny_fashion, tmp_path / f"a{alpha}", epochs=2, crop_padding=2, cutout=4, seed=5)
        distill(cfg, teachers, alpha=alpha, cache_dir=tmp_path / "cache", **mode)
    assert len(seen[0]) == len(seen[1]) == 2 * (461 // 64)  # 512 images less the 10% validation, whole batches
    for a, b in zip(*seen):
        assert torch.equal(a, b)


@pytest.mark.parametrize("rates, best, past", [
    ([5e-4, 1e-3, 2e-3], 5e-4, 2.5e-4), ([5e-4, 1e-3, 2e-3], 2e-3, 4e-3), ([0.4, 0.1, 0.2], 0.4, 0.8),
    ([0.1, 0.2, 0.4], 0.2, None), ([1e-3], 1e-3, None), ([1e-3, 1e-3], 1e-3, None)])
def test_a_rate_search_widens_past_the_edge_where_its_best_sits(rates, best, past):
    assert beyond_edge(rates, best) == past


def _lab_args(data, out, results, seeds="2"):
    return ["lab", "mimic", "--teacher-models", "mimic_snn_1k", "mimic_snn_1k", "--teacher-epochs", "1",
            "--students", "mimic_snn_1k", "--objectives", "labels", "mimic", "--lrs", "0.0005", "0.002",
            "--lr-widen", "1",
            "--transfer-copies", "1", "--copies-sweep", "0", "--cutout", "4", "--epochs", "2", "--seeds", seeds,
            "--max-train-samples", "0", "--data-dir", str(data), "--out", str(out), "--results", str(results),
            "--threads", "1", "--no-progress"]


def test_lab_mimic_writes_seeds_intervals_verdicts_and_targets_then_resumes(tiny_fashion, tmp_path, capsys):
    out, results = tmp_path / "lab", tmp_path / "results"
    assert main(_lab_args(tiny_fashion, out, results)) == 0
    printed = capsys.readouterr().out
    report = json.loads((results / "mimic.json").read_text())
    assert [r["model"] for r in report["rows"]] == ["mimic_snn_1k labels", "mimic_snn_1k mimic",
                                                    "mimic_snn_1k labels K=0", "mimic_snn_1k mimic K=0"]
    # the rate is chosen on validation with seed 0 only; the chosen rate then runs with seed 1. A grid of two
    # rates has its best at an edge, so --lr-widen 1 tries one more past it, the grid's ratio (4x) continued
    search = report["meta"]["lr_search"]
    edges = []
    for group in ("mimic_snn_1k labels", "mimic_snn_1k mimic"):
        tried = [r for r in search if r["group"] == group]
        grid = [r for r in tried if r["lr"] in (0.0005, 0.002)]
        past = 0.000125 if max(grid, key=lambda r: (r["val_accuracy"], -r["lr"]))["lr"] == 0.0005 else 0.008
        assert [r["lr"] for r in tried] == sorted([0.0005, 0.002, past]) and {r["seed"] for r in tried} == {0}
        best = max(tried, key=lambda r: (r["val_accuracy"], -r["lr"]))
        assert [r["chosen"] for r in tried] == [r is best for r in tried]
        edges += [group] if best["lr"] in (tried[0]["lr"], tried[-1]["lr"]) else []
        runs = [r for r in report["runs"] if r["model"] == group]
        assert sorted(r["seed"] for r in runs) == [0, 1] and {r["lr"] for r in runs} == {best["lr"]}
    accs = {row["model"]: [r["test_accuracy"] for r in report["runs"] if r["model"] == row["model"]]
            for row in report["rows"]}
    for row in report["rows"]:
        assert row["seeds"] == 2 and row["ci95"] is not None
        assert row["gap_to_teacher"] == pytest.approx(report["meta"]["teacher"]["test_accuracy"] - row["test_accuracy"])
    assert [(c["a"], c["b"]) for c in report["comparisons"]] == [
        ("mimic_snn_1k mimic", "mimic_snn_1k labels"), ("mimic_snn_1k mimic K=0", "mimic_snn_1k labels K=0"),
        ("mimic_snn_1k mimic", "mimic_snn_1k mimic K=0"), ("mimic_snn_1k labels", "mimic_snn_1k labels K=0")]
    for c in report["comparisons"]:
        assert c["verdict"] == welch(accs[c["a"]], accs[c["b"]], c["a"], c["b"]).as_dict()["verdict"]
    teacher = report["meta"]["teacher"]
    assert len(teacher["members"]) == 2 and 0 < teacher["test_accuracy"] <= 100
    # the report's time counts every run: the listed ones, the teachers and the rates the search did not keep
    unlisted = ([m["train_seconds"] for m in teacher["members"]]
                + [r["train_seconds"] for r in search if not r["chosen"]])
    assert report["meta"]["other_train_seconds"] == pytest.approx(sum(unlisted)) and len(unlisted) == 2 + 4
    assert all(r["teacher_test_accuracy"] == teacher["test_accuracy"] for r in report["runs"])
    for t in report["targets"]:  # each target's line starts with MET or NOT MET, as its computed flag says
        assert f"{'MET' if t['met'] else 'NOT MET'}: {t['target']}" in printed
    markdown = (results / "mimic.md").read_text()
    assert report["meta"]["command"] in markdown and "## Teacher" in markdown and "chosen" in markdown
    # the report names the groups whose chosen rate is still at an edge of the widened grid, and only those
    assert ("Chosen at the edge of the grid" in markdown) == bool(edges) and "up to 1 more rate(s)" in markdown
    for group in ("mimic_snn_1k labels", "mimic_snn_1k mimic"):
        assert (f"{group} (" in markdown) == (group in edges)
    assert report["meta"]["command"].startswith("nondeep lab mimic --epochs 2")
    for name in ("mimic.png", "mimic-curves.png"):
        assert (out / name).is_file() and (results / name).is_file()
    # started again with the same --out: every run (teachers, search, seeds, K sweep) is reused, none retrained
    assert main(_lab_args(tiny_fashion, out, tmp_path / "again")) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing the finished run") == 2 + 6 + 2 + 4 and "epoch 1/" not in printed
    again = json.loads((tmp_path / "again" / "mimic.json").read_text())
    assert [r["test_accuracy"] for r in again["runs"]] == [r["test_accuracy"] for r in report["runs"]]


@pytest.mark.parametrize("main_student", ["mimic_snn_8k", "parnet_tiny"])
def test_targets_hold_the_shallow_gain_to_a_shallow_student_and_parnet_to_its_label_twin(main_student):
    """Ba & Caruana's >= 1 point gain is the shallow student's target; a ParNet student, first or not, is held
    to its label twin (at or above), never to the shallow gain."""
    students = [main_student, "parnet_tiny"] if main_student != "parnet_tiny" else ["parnet_tiny"]
    diff = {"mimic_snn_8k": 1.2, "parnet_tiny": -0.3}
    report = {"meta": {"teacher": {"test_accuracy": 94.0}},
              "rows": [{"model": f"{s} {o}", "student": s, "objective": o}
                       for s in students for o in ("labels", "mimic")],
              "comparisons": [{"a": f"{s} mimic", "b": f"{s} labels", "diff": diff[s], "low": diff[s] - 0.1,
                               "high": diff[s] + 0.1} for s in students]}
    targets = check_targets(report, main_student)
    assert targets[0]["target"].startswith("teacher ensemble") and targets[0]["met"] is False
    gains = [t for t in targets if "1.0 point above" in t["target"]]
    assert [t["target"].split()[0] for t in gains] == (["mimic_snn_8k"] if main_student == "mimic_snn_8k" else [])
    assert all(t["met"] for t in gains)
    twins = [t for t in targets if "at or above its label twin" in t["target"]]
    assert [(t["target"].split()[0], t["met"]) for t in twins] == [("parnet_tiny", False)]


@pytest.mark.parametrize("online, sweep", [(False, [1]), (True, [])])
def test_the_copies_are_swept_by_default_unless_the_teacher_runs_online(monkeypatch, online, sweep):
    import nondeep.experiments.mimic as mimic_lab

    seen = []

    def stop(objectives, copies_sweep, *rest):  # the options as the lab resolved them, before anything trains
        seen.append(copies_sweep)
        raise LabError("stopped")

    monkeypatch.setattr(mimic_lab, "check_options", stop)
    with pytest.raises(LabError, match="stopped"):
        mimic_lab.run_mimic_lab(budget=Budget(device="cpu"), teacher_online=online)
    assert seen == [sweep]  # online there is no cached set to sweep: an explicit sweep is refused (below)


@pytest.mark.parametrize("flags, message", [
    (["--objectives", "mimic"], "must include labels"),
    (["--copies-sweep", "-1"], "must be >= 0"),
    (["--teacher-online", "--copies-sweep", "1"], "--teacher-online"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--lr-widen", "-1"], "--lr-widen must be >= 0"),
])
def test_lab_mimic_refuses_bad_options_in_one_line(tiny_fashion, tmp_path, capsys, flags, message):
    args = _lab_args(tiny_fashion, tmp_path / "lab", tmp_path / "results") + flags
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "lab").exists() and not (tmp_path / "results").exists()
