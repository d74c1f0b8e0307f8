"""The time-to-accuracy benchmark (issue 13, item 5): schedules tuned on validation (one seed, or several for
the best of them), the test split read after each epoch only to time the target, verdicts computed from the
seeds."""

import json

import pytest

from nondeep.experiments._lab import Budget, LabError
from nondeep.train import TrainConfig


def test_time_to_accuracy_tunes_on_validation_and_times_on_test(tiny_fashion, tmp_path):
    from nondeep.experiments.time_to_accuracy import run_time_to_accuracy, seconds_to_target

    history = [{"epoch": 1, "epoch_seconds": 10.0, "eval_top1": 50.0},
               {"epoch": 2, "epoch_seconds": 12.0, "eval_top1": 81.0}]
    assert seconds_to_target(history, 80.0) == (22.0, 2) and seconds_to_target(history, 90.0) == (None, None)
    budget = Budget(seeds=2, max_train_samples=64, data_dir=str(tiny_fashion), progress=False)
    report = run_time_to_accuracy(tmp_path / "tta", ["mimic_snn_1k", "preact_resnet_20"], target=0.0,
                                  epoch_grid=(1, 2), budget=budget)
    assert [t["epochs_planned"] for t in report["tuning"]] == [1, 2, 1, 2]
    for row in report["rows"]:  # target 0 is reached after the first epoch: the shortest schedule wins on val
        assert row["epochs_chosen_on_val"] == 1 and row["seeds_reaching_target"] == "2/2"
        for run in row["runs"]:
            assert run["epoch_reached"] == 1
    summary = json.loads((tmp_path / "tta" / "measure" / "mimic_snn_1k-1ep" / "seed1" / "summary.json").read_text())
    assert summary["eval_split"] == "test" and summary["config"]["val_split"] == 0.0
    comparison = report["comparisons"][0]
    assert (comparison["a"], comparison["b"]) == ("preact_resnet_20", "mimic_snn_1k")
    assert "time to target" in comparison["verdict"] or "slower to target than" in comparison["verdict"]
    markdown = (tmp_path / "tta" / "time_to_accuracy.md").read_text()
    assert ("- budget: tuning: epoch counts [1, 2] at the recipe's learning rate, seed 0, trained on 64 images of "
            "the training set less the 10% held out for validation; measuring: each model at its chosen epoch "
            "count, seeds [0, 1], trained on the first 64 training images (no split)\n") in markdown


def test_time_to_accuracy_tunes_the_learning_rate_on_validation_when_given_a_grid(tiny_fashion, tmp_path):
    from nondeep.experiments.time_to_accuracy import run_time_to_accuracy

    budget = Budget(seeds=1, max_train_samples=64, data_dir=str(tiny_fashion), progress=False)
    run_time_to_accuracy(tmp_path / "tta", ["mimic_snn_1k"], target=0.0, epoch_grid=(1,), budget=budget)
    report = run_time_to_accuracy(tmp_path / "tta", ["mimic_snn_1k"], target=0.0, epoch_grid=(1,), budget=budget,
                                  lr_grid=(1e-3, TrainConfig.lr), lr_widen=0)  # the recipe's lr run is reused
    tried = report["tuning"]
    assert [t["lr"] for t in tried] == [1e-3, TrainConfig.lr] and sum(t["chosen"] for t in tried) == 1
    assert sorted(p.name for p in (tmp_path / "tta" / "tuning").iterdir()) == ["mimic_snn_1k-1ep",
                                                                                "mimic_snn_1k-1ep-lr0.001"]
    chosen = next(t for t in tried if t["chosen"])  # both reach target 0 at epoch 1: the higher validation wins
    assert chosen["final_val_accuracy"] == max(t["final_val_accuracy"] for t in tried)
    assert report["rows"][0]["lr_chosen_on_val"] == chosen["lr"]
    name = "mimic_snn_1k-1ep" + ("" if chosen["lr"] == TrainConfig.lr else "-lr0.001")
    measured = tmp_path / "tta" / "measure" / name / "seed0" / "summary.json"
    assert json.loads(measured.read_text())["config"]["lr"] == chosen["lr"]
    assert report["meta"]["lr_grid"] == [1e-3, TrainConfig.lr]
    assert "x peak learning rates [0.001, 0.2]" in (tmp_path / "tta" / "time_to_accuracy.md").read_text()


def test_time_to_accuracy_widens_its_lr_grid_past_the_edge_where_the_chosen_rate_sits(tiny_fashion, tmp_path):
    from nondeep.experiments.time_to_accuracy import choose_schedule, run_time_to_accuracy

    budget = Budget(seeds=1, max_train_samples=64, data_dir=str(tiny_fashion), progress=False)
    report = run_time_to_accuracy(tmp_path / "tta", ["mimic_snn_1k"], target=0.0, epoch_grid=(1, 2), budget=budget,
                                  lr_grid=(1e-3, 2e-3), lr_widen=1)
    tried = report["tuning"]
    grid = [t for t in tried if t["lr"] in (1e-3, 2e-3)]
    past = 5e-4 if choose_schedule(grid)["lr"] == 1e-3 else 4e-3  # a grid of two: its choice is at an edge
    rates = sorted([1e-3, 2e-3, past])
    assert [(t["epochs_planned"], t["lr"]) for t in tried] == [(e, lr) for e in (1, 2) for lr in rates]
    assert [t["chosen"] for t in tried] == [t is choose_schedule(tried) for t in tried]
    assert report["rows"][0]["lr_chosen_on_val"] == choose_schedule(tried)["lr"] and report["meta"]["lr_widen"] == 1
    assert "up to 1 more past it" in (tmp_path / "tta" / "time_to_accuracy.md").read_text()


def test_time_to_accuracy_runs_its_best_schedules_again_on_more_seeds_and_chooses_on_their_means(tiny_fashion,
                                                                                                   tmp_path):
    from nondeep.experiments.time_to_accuracy import rank_schedules, run_time_to_accuracy

    budget = Budget(seeds=1, max_train_samples=64, data_dir=str(tiny_fashion), progress=False)
    first = run_time_to_accuracy(tmp_path / "one", ["mimic_snn_1k"], target=0.0, epoch_grid=(1,), budget=budget,
                                 lr_grid=(1e-3, 4e-3, 2e-2), lr_widen=0)
    report = run_time_to_accuracy(tmp_path / "tta", ["mimic_snn_1k", "preact_resnet_20"], target=0.0,
                                  epoch_grid=(1,), budget=budget, lr_grid=(1e-3, 4e-3, 2e-2), lr_widen=0,
                                  tune_seeds=3, finalists=2)
    tried = [t for t in report["tuning"] if t["model"] == "mimic_snn_1k"]
    finalists = [t for t in tried if t["seeds"] == 3]
    single = first["tuning"]  # the same grid on the first seed alone
    assert {t["lr"] for t in finalists} == {t["lr"] for t in rank_schedules(single)[:2]} and len(tried) == 3
    for row in finalists:
        assert [s["seed"] for s in row["per_seed"]] == [0, 1, 2]
        assert row["final_val_accuracy"] == round(sum(s["final_val_accuracy"] for s in row["per_seed"]) / 3, 2)
    chosen = next(t for t in tried if t["chosen"])
    assert chosen in finalists and chosen["final_val_accuracy"] == max(t["final_val_accuracy"] for t in finalists)
    runs = tmp_path / "tta" / "tuning"
    assert sorted(p.parent.name for p in runs.glob("mimic_snn_1k-*/seed2")) == sorted(
        f"mimic_snn_1k-1ep-lr{t['lr']:g}" for t in finalists)
    tuned = max(p.stat().st_mtime for p in runs.glob("*/seed*/summary.json"))
    measured = min(p.stat().st_mtime for p in (tmp_path / "tta" / "measure").glob("*/seed*/summary.json"))
    assert tuned <= measured  # every model is tuned before the first timed run
    assert ("seed 0, then its 2 best schedules on seeds 0-2, joined one at a time by the next schedules that "
            "reached the target on the first seed until one reached it on every seed (chosen on their means"
            in (tmp_path / "tta" / "time_to_accuracy.md").read_text())
    with pytest.raises(LabError, match="tune_seeds"):
        run_time_to_accuracy(tmp_path / "bad", ["mimic_snn_1k"], budget=budget, tune_seeds=0)


def test_racing_goes_past_the_finalists_until_a_schedule_reaches_the_target_on_every_seed(monkeypatch, tmp_path):
    from nondeep.experiments import time_to_accuracy as tta

    later_seeds_need = 2  # the epochs a schedule needs to reach the target on seeds 1 and 2

    def fake_tune(folder, model, epochs, lr, budget, target, seed):  # seed 0: all but lr 0.05 reach at epoch 2
        reached = 2 if lr != 0.05 and (seed == 0 or epochs >= later_seeds_need) else None
        val = 70.0 + 10 * lr + epochs / 10
        return {"model": model, "epochs_planned": epochs, "lr": lr, "seeds": 1, "val_seconds_to_target": reached,
                "val_epoch_reached": reached, "final_val_accuracy": val,
                "per_seed": [{"seed": seed, "val_epoch_reached": reached, "final_val_accuracy": val}]}

    monkeypatch.setattr(tta, "_tune", fake_tune)
    budget = Budget(seeds=1)

    def raced(need: int) -> list[tuple[int, float]]:
        nonlocal later_seeds_need
        later_seeds_need = need
        tried = tta.tune_schedules(tmp_path, "m", (2, 3), (0.05, 0.1, 0.2), 0, budget, 75.0, tune_seeds=3,
                                   finalists=1)
        return [(t["epochs_planned"], t["lr"]) for t in tta.rank_schedules(tried) if t["seeds"] == 3]

    assert raced(2) == [(2, 0.2)]  # the one finalist reaches it on every seed: nothing more runs
    # only 3-epoch schedules reach it on the later seeds: both 2-epoch ones are raced, then the first 3-epoch one
    assert raced(3) == [(3, 0.2), (2, 0.2), (2, 0.1)]
    # none does: every schedule that reached it on seed 0 is raced, none that missed there; the best mean chosen
    assert raced(4) == [(3, 0.2), (2, 0.2), (3, 0.1), (2, 0.1)]


def test_a_schedule_tuned_on_several_seeds_reaches_the_target_only_if_every_seed_did():
    from nondeep.experiments.time_to_accuracy import combine_seeds

    def row(seed: int, reached: int | None, val: float) -> dict:
        return {"model": "m", "epochs_planned": 3, "lr": 0.1, "seeds": 1, "val_seconds_to_target": 1.0 * seed,
                "val_epoch_reached": reached, "final_val_accuracy": val,
                "per_seed": [{"seed": seed, "val_epoch_reached": reached, "final_val_accuracy": val}]}

    both = combine_seeds([row(0, 2, 80.0), row(1, 3, 81.0)])
    assert (both["seeds"], both["val_epoch_reached"], both["final_val_accuracy"]) == (2, 2.5, 80.5)
    assert both["val_seconds_to_target"] == 0.5 and [s["seed"] for s in both["per_seed"]] == [0, 1]
    one_missed = combine_seeds([row(0, 2, 80.0), row(1, None, 70.0)])
    assert one_missed["val_epoch_reached"] is None and one_missed["val_seconds_to_target"] is None
    assert one_missed["final_val_accuracy"] == 75.0


def test_the_schedule_reaching_the_target_soonest_on_validation_is_chosen():
    from nondeep.experiments.time_to_accuracy import choose_schedule

    def row(epochs: int, lr: float, reached: int | None, val: float) -> dict:
        return {"epochs_planned": epochs, "lr": lr, "val_epoch_reached": reached, "final_val_accuracy": val}

    fast, slow, tie_shorter = row(4, 0.1, 2, 90.0), row(2, 0.2, None, 95.0), row(2, 0.4, 2, 85.0)
    assert choose_schedule([slow, fast]) is fast  # reaching it counts before the final accuracy
    assert choose_schedule([fast, tie_shorter]) is tie_shorter  # same epoch reached: the shorter schedule
    assert choose_schedule([row(2, 0.1, 2, 88.0), row(2, 0.2, 2, 89.0)])["lr"] == 0.2  # then the higher accuracy
    assert choose_schedule([row(2, 0.1, None, 60.0), slow, row(4, 0.1, None, 70.0)]) is slow  # none: the best


def test_time_verdicts_state_the_slower_model_with_its_interval_in_that_direction():
    from nondeep.experiments.time_to_accuracy import _time_verdict

    a_faster = {"a": "resnet", "b": "parnet", "diff": -1.02, "low": -1.11, "high": -0.93, "decided": True,
                "df": 3.9, "p_value": 0.001}
    assert _time_verdict(a_faster) == "parnet slower to target than resnet by 1.02 min (95% CI [+0.93, +1.11] min)"
    a_slower = {**a_faster, "diff": 0.5, "low": 0.2, "high": 0.8}
    assert _time_verdict(a_slower) == "resnet slower to target than parnet by 0.50 min (95% CI [+0.20, +0.80] min)"
    level = {**a_faster, "diff": -0.1, "low": -0.3, "high": 0.1, "decided": False}
    assert _time_verdict(level) == ("resnet vs parnet: no detectable difference in time to target (-0.10 min, "
                                    "95% CI [-0.30, +0.10] min)")
    assert _time_verdict({**level, "low": None}) == "resnet vs parnet: one seed on a side, no verdict"
