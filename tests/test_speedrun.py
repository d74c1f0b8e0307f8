"""`nondeep speedrun` (issue 14): the schedule is chosen on validation with seeds of its own, the measured runs'
accuracy and time are what their runs wrote, the verdicts follow the numbers, and bad input is one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from nondeep.cli import main
from nondeep.experiments._lab import LabError
from nondeep.experiments.speedrun import (RECIPE, TUNING_SEED_OFFSET, candidate, check_depth, choose_epochs,
                                         choose_recipe)
from nondeep.models import create_model
from nondeep.stats import estimate
from nondeep.train import evaluate_checkpoint, load_config

REPO = Path(__file__).resolve().parents[1]

# a fast depth-3 student keeps the end-to-end runs to seconds; the recipe's own fields ride along
CONFIG = "model: mimic_snn_1k\noptimizer: adamw\nlr: 0.003\ntta_flip: true\nchannels_last: true\nbatch_size: 64\n"


def speedrun(tmp_path: Path, data: Path, *flags: str) -> dict:
    config = tmp_path / "recipe.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "sr"
    code = main(["speedrun", "--config", str(config), "--quick", "--data-dir", str(data), "--out", str(out),
                 "--no-progress", "--results", str(tmp_path / "results"), *flags])
    assert code == 0
    return json.loads((out / "speedrun.json").read_text())


def summary_of(run: dict) -> dict:
    return json.loads((Path(run["out"]) / "summary.json").read_text())


def test_a_reachable_target_takes_the_shortest_schedule_and_measures_every_seed(tiny_fashion, tmp_path):
    report = speedrun(tmp_path, tiny_fashion, "--target", "1", "--margin", "0", "--epoch-grid", "1", "2", "--seeds", "2",
                      "--tune-seeds", "1")
    assert [t["epochs"] for t in report["tuning"]] == [1] and report["chosen_reached_bar"]  # 2 epochs: not needed
    assert report["tuning"][0]["seeds"] == [TUNING_SEED_OFFSET]  # not a measured seed
    assert [r["seed"] for r in report["runs"]] == [0, 1] and {r["epochs"] for r in report["runs"]} == {1}
    for run in report["runs"]:
        summary = summary_of(run)
        assert run["test_accuracy"] == summary["test_accuracy"]
        assert summary["config"]["tta_flip"] and summary["config"]["channels_last"]  # the recipe was trained
        assert summary["config"]["model"] == "mimic_snn_1k" and summary["config"]["val_split"] == 0.1
        # the test accuracy was read with the mirror averaged in: `nondeep eval` of the checkpoint does the same
        evaluated = evaluate_checkpoint(summary["checkpoint"], data_dir=str(tiny_fashion))
        assert evaluated["tta_flip"] and evaluated["eval_top1"] == pytest.approx(run["test_accuracy"])
        with open(Path(run["out"]) / "metrics.csv") as f:
            epoch_seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(f)]
        assert run["train_seconds"] == pytest.approx(sum(epoch_seconds))  # evaluation excluded
        assert run["train_seconds"] < summary["train_seconds"]
    accuracies = [r["test_accuracy"] for r in report["runs"]]
    assert report["test_accuracy"]["mean"] == pytest.approx(estimate(accuracies).mean)
    assert report["test_accuracy"]["low"] == pytest.approx(estimate(accuracies).low)
    assert report["verdicts"][0].startswith("MET: mean test accuracy") and len(report["verdicts"]) == 1
    markdown = (tmp_path / "results" / "speedrun.md").read_text()
    assert "nondeep speedrun --config" in markdown and "Chosen: 1 epochs, the shortest" in markdown
    assert "--epoch-grid 1 2 --margin 0 --tune-seeds 1" in report["meta"]["command"]
    assert "- recipe: mimic_snn_1k, TrainConfig's defaults except batch_size 64, optimizer adamw, lr 0.003" in markdown


def test_an_unreachable_target_measures_the_longest_schedule_and_says_so(tiny_fashion, tmp_path):
    report = speedrun(tmp_path, tiny_fashion, "--target", "100", "--epoch-grid", "1", "2", "--seeds", "2",
                      "--tune-seeds", "1", "--time-target", "1e-6")
    assert [t["epochs"] for t in report["tuning"]] == [1, 2]
    assert report["chosen_epochs"] == 2 and not report["chosen_reached_bar"]
    assert {r["epochs"] for r in report["runs"]} == {2}
    assert [v.split(":")[0] for v in report["verdicts"]] == ["NOT MET", "NOT MET"]
    assert "NO epoch count of the grid reached 100.5%" in (tmp_path / "sr" / "speedrun.md").read_text()


def test_a_time_target_of_0_is_none_and_the_command_says_so(tiny_fashion, tmp_path, monkeypatch):
    monkeypatch.setattr("nondeep.cli.speedrun.on_gpu", lambda device: True)  # where 10 s is the default
    report = speedrun(tmp_path, tiny_fashion, "--target", "1", "--seeds", "2", "--time-target", "0")
    assert report["meta"]["time_target"] is None and len(report["verdicts"]) == 1  # accuracy only
    assert "--time-target 0" in report["meta"]["command"]  # so that the command runs the same again
    report = speedrun(tmp_path, tiny_fashion, "--target", "1", "--seeds", "2")
    assert report["meta"]["time_target"] == 10 and len(report["verdicts"]) == 2


def test_one_epoch_count_is_measured_as_given_without_tuning_runs(tiny_fashion, tmp_path, monkeypatch):
    monkeypatch.setattr("nondeep.experiments._lab.native_cpu_bf16", lambda: True)
    monkeypatch.setattr("nondeep.train.loop.native_cpu_bf16", lambda: True)  # emulated bf16: same numbers, slower
    monkeypatch.setattr("torch.compile", lambda model, **_: model)  # the flag is under test here, not inductor
    report = speedrun(tmp_path, tiny_fashion, "--target", "1", "--seeds", "2", "--cpu-bf16", "--compile")
    assert report["tuning"] == [] and report["chosen_epochs"] == 1 and report["chosen_reached_bar"] is None
    assert sorted(p.name for p in (tmp_path / "sr").glob("*/seed*")) == ["seed0", "seed1"]  # no tuning seeds
    for run in report["runs"]:
        config = summary_of(run)["config"]
        assert config["cpu_bf16"] and config["compile"] and config["tta_flip"]  # speed options and recipe, both
    command = report["meta"]["command"]
    assert "--cpu-bf16 --compile" in command and f"--data-dir {tiny_fashion}" in command
    assert "--tune-seeds" not in command  # nothing was tuned: the command does not claim a tuning budget
    assert "one epoch count, 1, measured as given (not chosen on validation)" in (tmp_path / "sr" / "speedrun.md").read_text()


def test_choose_epochs_takes_the_first_that_reaches_the_bar():
    tuning = [{"epochs": 4, "val_accuracy": 93.0}, {"epochs": 8, "val_accuracy": 94.6},
              {"epochs": 16, "val_accuracy": 95.0}]
    assert choose_epochs(tuning, 94.5) == (8, True)
    assert choose_epochs(tuning, 94.6) == (8, True)  # reaching the bar counts
    assert choose_epochs(tuning, 96.0) == (16, False)


def test_choose_recipe_takes_the_fastest_that_reaches_the_bar_else_the_best_on_validation():
    tuning = [{"recipe": "b256", "epochs": 4, "val_accuracy": 94.0, "train_seconds": 4.0},
              {"recipe": "b256", "epochs": 8, "val_accuracy": 94.6, "train_seconds": 8.0},
              {"recipe": "b1024", "epochs": 4, "val_accuracy": 93.8, "train_seconds": 2.0},
              {"recipe": "b1024", "epochs": 8, "val_accuracy": 94.5, "train_seconds": 4.5},
              {"recipe": "b64", "epochs": 4, "val_accuracy": 94.8, "train_seconds": 12.0}]
    assert choose_recipe(tuning, 94.5) == ("b1024", 8, True)  # 4.5 s against 8 s and 12 s
    assert choose_recipe(tuning, 94.6) == ("b256", 8, True)  # b1024 no longer reaches it
    assert choose_recipe(tuning, 94.8) == ("b64", 4, True)  # the only one: speed does not matter
    assert choose_recipe(tuning, 95.0) == ("b64", 4, False)  # none: the best at its longest count
    assert choose_recipe(tuning[:4], 95.0) == ("b256", 8, False)


def test_candidate_recipes_are_each_tuned_and_the_fastest_to_the_bar_is_measured(tiny_fashion, tmp_path):
    configs = []
    for name, batch in (("b32", 32), ("b128", 128)):
        configs.append(tmp_path / f"{name}.yaml")
        configs[-1].write_text(CONFIG.replace("batch_size: 64", f"batch_size: {batch}"))
    out = tmp_path / "sr"
    code = main(["speedrun", "--config", *map(str, configs), "--quick", "--data-dir", str(tiny_fashion), "--out",
                 str(out), "--no-progress", "--target", "1", "--margin", "0", "--seeds", "2", "--tune-seeds", "1"])
    report = json.loads((out / "speedrun.json").read_text())
    assert code == 0 and [(t["recipe"], t["epochs"]) for t in report["tuning"]] == [("b32", 1), ("b128", 1)]
    for row in report["tuning"]:  # each recipe's tuning time is what its runs wrote
        with open(out / f"{row['recipe']}-1ep" / f"seed{TUNING_SEED_OFFSET}" / "metrics.csv") as f:
            assert row["train_seconds"] == pytest.approx(sum(float(r["epoch_seconds"]) for r in csv.DictReader(f)))
    fastest = min(report["tuning"], key=lambda t: t["train_seconds"])["recipe"]
    assert report["chosen_recipe"] == fastest and report["chosen_reached_bar"]
    assert [r["recipe"] for r in report["runs"]] == [fastest, fastest]
    batch = {"b32": 32, "b128": 128}[fastest]
    assert {summary_of(r)["config"]["batch_size"] for r in report["runs"]} == {batch}
    assert report["meta"]["recipe"]["batch_size"] == batch and set(report["meta"]["candidates"]) == {"b32", "b128"}
    markdown = (out / "speedrun.md").read_text()
    assert f"Chosen: {fastest} at 1 epochs: of the recipes whose mean validation accuracy reached 1%" in markdown
    assert "- candidates: b32: mimic_snn_1k, TrainConfig's defaults except batch_size 32" in markdown
    assert f"--config {configs[0]} {configs[1]} --target 1" in report["meta"]["command"]


def test_two_candidate_recipes_with_one_name_or_a_deep_one_are_one_line(tiny_fashion, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "recipe.yaml").write_text(CONFIG)
    (tmp_path / "recipe.yaml").write_text(CONFIG)
    (tmp_path / "deep.yaml").write_text("model: preact_resnet_20\n")
    out = tmp_path / "sr"
    cases = [(["a/recipe.yaml", "recipe.yaml"], "two share one (['recipe', 'recipe']): rename one"),
             (["recipe.yaml", "deep.yaml"], "measures depth 20: the speedrun is for networks of depth")]
    for configs, message in cases:
        code = main(["speedrun", "--config", *(str(tmp_path / c) for c in configs), "--data-dir", str(tiny_fashion),
                     "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1
        assert not out.exists()


def test_the_default_recipe_is_depth_12_and_a_deep_model_is_refused():
    assert RECIPE["model"] == "parnet_tiny" and check_depth("parnet_tiny", {}) == 12
    # configs/speedrun_b256.yaml is the built-in recipe, so that it can be a candidate beside others
    assert candidate("b256", load_config(REPO / "configs" / "speedrun_b256.yaml")) == candidate("b256", None)
    with pytest.raises(LabError, match="measures depth 20: the speedrun is for networks of depth <= 12"):
        check_depth("preact_resnet_20", {})


def test_the_best_accuracy_recipe_is_depth_12_under_1_5m_parameters():
    best = candidate("best", load_config(REPO / "configs" / "best_parnet_w2.yaml"))  # issue 14: < 1.5 M, depth <= 12
    net = create_model(best.model, num_classes=10, in_chans=1, **best.model_kwargs)
    assert best.depth == 12 and sum(p.numel() for p in net.parameters()) == 1_407_658


@pytest.mark.parametrize("flags, message", [
    (["--epoch-grid", "0"], "--epoch-grid takes epoch counts of 1 or more"),
    (["--val-split", "0"], "--val-split must be above 0"),
    (["--tune-seeds", "0"], "--tune-seeds must be at least 1"),
    (["--target", "101"], "--target is a test accuracy in percent"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--time-target", "-1"], "--time-target is in seconds, 0 for none"),
])
def test_bad_options_are_one_line_and_train_nothing(tiny_fashion, tmp_path, capsys, flags, message):
    out = tmp_path / "sr"
    code = main(["speedrun", "--data-dir", str(tiny_fashion), "--out", str(out), "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cpu_bf16_on_a_cpu_without_native_bf16_is_one_line(tiny_fashion, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("nondeep.experiments._lab.native_cpu_bf16", lambda: False)
    out = tmp_path / "sr"
    code = main(["speedrun", "--data-dir", str(tiny_fashion), "--out", str(out), "--no-progress", "--device", "cpu",
                 "--cpu-bf16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--cpu-bf16 needs CPU runs on a CPU with native bf16" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("flags, warmed", [(["--compile"], True), (["--compile", "--no-warm-up"], False), ([], False)])
def test_a_compiled_recipe_is_compiled_by_an_untimed_warm_up_run_first(tiny_fashion, tmp_path, monkeypatch, flags,
                                                                        warmed):
    monkeypatch.setattr("torch.compile", lambda model, **_: model)  # the protocol is under test here, not inductor
    import nondeep.experiments.speedrun as speedrun_module

    trained = []

    def spy(folder, run, budget, seed, **recipe):
        trained.append((run.label, seed, budget.max_train_samples, recipe["epochs"]))
        return train_run(folder, run, budget, seed, **recipe)

    train_run = speedrun_module.train_run
    monkeypatch.setattr(speedrun_module, "train_run", spy)
    report = speedrun(tmp_path, tiny_fashion, "--target", "1", "--seeds", "2", *flags)
    markdown = (tmp_path / "sr" / "speedrun.md").read_text()
    measured = [(label, seed) for label, seed, *_ in trained if "warmup" not in label]
    assert measured == [("recipe-1ep", 0), ("recipe-1ep", 1)]  # the timed runs are as without it
    if warmed:
        # first, before any timed run: one epoch of 4 full batches of the recipe's 64, on seeds of its own
        assert trained[0] == ("recipe-warmup", speedrun_module.WARMUP_SEED_OFFSET, 286, 1)
        [warmup] = report["warmup"]
        assert warmup["steps"] == speedrun_module.WARMUP_STEPS and warmup["batch_size"] == 64
        assert warmup["seconds"] > 0 and "an untimed warm-up run per recipe (recipe: 4 steps of 64 images" in markdown
        assert not list((tmp_path / "sr").glob("*warmup*"))  # thrown away
    else:
        assert report["warmup"] == [] and len(trained) == 2
        assert ("in each timed run's first epoch (no warm-up)" if flags else "compilation: none (eager)") in markdown
    assert ("--no-warm-up" in report["meta"]["command"]) == ("--no-warm-up" in flags)
