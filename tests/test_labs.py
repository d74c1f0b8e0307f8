"""The depth labs (issue 9): each runs end to end on a tiny budget and writes its JSON, markdown and plot; the
parts with a right answer (parameter matching, the Pareto front, the softmax ensemble, fractional WRN widths)
are checked against it."""

import json

import pytest
import torch
from torch import nn

from nondeep import measure
from nondeep.cli import main
from nondeep.errors import NondeepError
from nondeep.experiments._lab import Budget, match_params
from nondeep.experiments.blocks import run_blocks_lab
from nondeep.experiments.ensemble import SoftmaxEnsemble, run_ensemble_lab
from nondeep.experiments.pareto import dominates, pareto_front, run_pareto_lab
from nondeep.experiments.streams import run_streams_lab
from nondeep.experiments.width_depth import run_width_depth_lab, wrn_for_budget
from nondeep.models import create_model

ROW_KEYS = {"model", "depth", "params", "mflops", "test_accuracy", "latency_ms", "checkpoint"}


def tiny_budget(data_dir) -> Budget:
    return Budget(epochs=1, max_train_samples=64, data_dir=str(data_dir), progress=False)


def check_written(folder, name, n_rows):
    report = json.loads((folder / f"{name}.json").read_text())
    assert len(report["rows"]) == n_rows
    assert report["meta"]["command"].startswith(f"nondeep lab {name}")
    assert {"cpu", "cores", "threads", "torch"} <= set(report["meta"]["machine"])
    assert (folder / f"{name}.png").stat().st_size > 1000
    markdown = (folder / f"{name}.md").read_text()
    assert report["meta"]["command"] in markdown and "| model" in markdown
    return report


def test_wide_resnet_takes_a_fractional_width():
    model = create_model("wide_resnet", depth=10, widen_factor=1.5, num_classes=10, in_chans=1)
    assert [m.out_channels for m in (model.layer1[0].conv2, model.layer2[0].conv2, model.layer3[0].conv2)] == [24, 48, 96]
    assert model.name == "wrn_10_1.5"
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_match_params_finds_the_closest_count_on_a_step_function():
    class Fake(nn.Module):  # params = 10 * round(value)
        def __init__(self, value):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(10 * round(value)))

    grid = [i / 10 for i in range(10, 200)]
    value, count = match_params(Fake, 73, grid)
    assert count == 70 and round(value) == 7
    assert match_params(Fake, 10_000, grid)[1] == 200  # beyond the grid: its last value


def test_wrn_for_budget_lands_near_the_budget():
    k, count = wrn_for_budget(16, 300_000)
    assert abs(count - 300_000) / 300_000 < 0.02
    model = create_model("wide_resnet", depth=16, widen_factor=k, num_classes=10, in_chans=1)
    assert measure.count_params(model) == count


def test_pareto_front_by_hand():
    rows = [{"acc": 90, "ms": 1.0, "depth": 12},   # front: fastest
            {"acc": 92, "ms": 2.0, "depth": 12},   # front: more accurate
            {"acc": 91, "ms": 3.0, "depth": 20},   # dominated by the second
            {"acc": 92, "ms": 2.0, "depth": 8}]    # front, and dominates the second (shallower)
    keys = [("acc", 1), ("ms", -1), ("depth", -1)]
    assert pareto_front(rows, keys) == [True, False, False, True]
    assert pareto_front(rows, [("acc", 1), ("ms", -1)]) == [True, True, False, True]  # ties do not dominate
    assert not dominates(rows[1], rows[3], [("acc", 1), ("ms", -1)])


def test_softmax_ensemble_is_the_log_of_the_mean_probability():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(5, 4)
    expected = ((a(x).softmax(-1) + b(x).softmax(-1)) / 2).log()
    torch.testing.assert_close(SoftmaxEnsemble([a, b])(x), expected)


def test_width_depth_lab_end_to_end(tiny_fashion, tmp_path):
    report, folder = run_width_depth_lab(tmp_path / "wd", depths=(10, 16), budget=tiny_budget(tiny_fashion))
    report = check_written(folder, "width-depth", 3)
    rows = {r["model"]: r for r in report["rows"]}
    assert ROW_KEYS <= set(rows["parnet_tiny"])
    assert [r["depth"] for r in report["rows"]] == [12, 8, 14]  # measured: WRN-n-k is n - 2 deep
    for row in report["rows"]:
        assert abs(row["params"] - report["meta"]["budget_params"]) / report["meta"]["budget_params"] < 0.03


def test_streams_lab_end_to_end(tiny_fashion, tmp_path):
    report, folder = run_streams_lab(tmp_path / "st", streams=(1, 2), budget=tiny_budget(tiny_fashion),
                                     budget_params=60_000)
    report = check_written(folder, "streams", 2)
    assert [r["num_streams"] for r in report["rows"]] == [1, 2]
    assert all(abs(r["params"] - 60_000) / 60_000 < 0.25 for r in report["rows"])


def test_ensemble_lab_end_to_end(tiny_fashion, tmp_path):
    report, folder = run_ensemble_lab(tmp_path / "en", members=2, budget=tiny_budget(tiny_fashion))
    report = check_written(folder, "ensemble", 4)
    kinds = [r["kind"] for r in report["rows"]]
    assert kinds == ["parnet", "ensemble", "member", "member"]
    parnet, ensemble = report["rows"][:2]
    assert abs(ensemble["params"] - parnet["params"]) / parnet["params"] < 0.15
    assert 0 <= ensemble["test_accuracy"] <= 100 and ensemble["latency_ms"] > 0


def test_blocks_lab_end_to_end_and_pareto_over_its_runs(tiny_fashion, tmp_path):
    _, folder = run_blocks_lab(tmp_path / "bl", block_types=("rep_sse", "plain"), budget=tiny_budget(tiny_fashion))
    report = check_written(folder, "blocks", 2)
    sse, plain = report["rows"]
    assert sse["fused_params"] > plain["fused_params"]  # the SSE gate stays after fusion
    # a plain block folds only its BN; the multi-branch block its 1x1 branches too
    assert 0 < plain["params"] - plain["fused_params"] < sse["params"] - sse["fused_params"]

    pareto, out = run_pareto_lab(tmp_path, out=tmp_path / "front")
    assert {r["run"] for r in pareto["rows"]} == {"bl/parnet_tiny rep_sse", "bl/parnet_tiny plain"}
    assert any(r["front"] for r in pareto["rows"])
    assert (out / "pareto.png").is_file() and (out / "pareto.md").is_file()


def test_pareto_refuses_a_folder_without_runs(tmp_path):
    with pytest.raises(NondeepError, match="does not exist"):
        run_pareto_lab(tmp_path / "missing")
    with pytest.raises(NondeepError, match="no finished fashion-mnist run"):
        run_pareto_lab(tmp_path)


def test_lab_commands_are_listed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["lab", "--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for name in ("mimic", "width-depth", "streams", "ensemble", "blocks", "pareto"):
        assert name in listed


def test_lab_command_line_runs(tiny_fashion, tmp_path, capsys):
    assert main(["lab", "blocks", "--block-types", "plain", "--epochs", "1", "--max-train-samples", "32",
          "--data-dir", str(tiny_fashion), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert "written under" in capsys.readouterr().out
    report = json.loads((tmp_path / "cli" / "blocks.json").read_text())
    assert report["meta"]["command"].endswith("--max-train-samples 32 --seed 0 --data-dir " + str(tiny_fashion))
