"""The depth labs (issue 9): each runs end to end on a tiny budget and writes its JSON, markdown and plot; the
parts with a right answer (parameter matching, the Pareto front, the softmax ensemble, fractional WRN widths)
are checked against it."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from nondeep import measure
from nondeep.cli import main
from nondeep.errors import NondeepError
from nondeep.experiments._lab import Budget, LabError, match_budget
from nondeep.experiments._lab_latency import fastest_latency
from nondeep.experiments._lab_report import compare
from nondeep.stats import estimate, welch
from nondeep.experiments.blocks import run_blocks_lab
from nondeep.experiments.ensemble import SoftmaxEnsemble, run_ensemble_lab
from nondeep.experiments.pareto import dominates, pareto_front, run_pareto_lab
from nondeep.experiments.streams import run_streams_lab
from nondeep.experiments.width_depth import run_width_depth_lab, wrn_for_budget
from nondeep.models import create_model

def tiny_budget(data_dir, seeds: int = 2, latency_forms=("eager",)) -> Budget:
    return Budget(epochs=1, max_train_samples=64, seeds=seeds, data_dir=str(data_dir), progress=False,
                  latency_forms=latency_forms)


def check_written(folder, name, models, seeds):
    """The report has one row per model, one per (model, seed) run, intervals and computed verdicts."""
    report = json.loads((folder / f"{name}.json").read_text())
    assert [r["model"] for r in report["rows"]] == models
    assert sorted((r["model"], r["seed"] % 1000) for r in report["runs"]) == sorted(
        (m, s) for m in models for s in range(seeds))
    for row in report["rows"]:
        accs = [r["test_accuracy"] for r in report["runs"] if r["model"] == row["model"]]
        assert row["test_accuracy"] == pytest.approx(sum(accs) / len(accs)) and row["seeds"] == seeds
        assert row["ci95"] == pytest.approx(estimate(accs).half_width)
    assert report["meta"]["command"].startswith(f"nondeep lab {name}")
    assert report["meta"]["seed_list"] == list(range(seeds))
    assert {"cpu", "cores", "threads", "torch", "load_average"} <= set(report["meta"]["machine"])
    for suffix in (".png", "-curves.png"):
        assert (folder / f"{name}{suffix}").stat().st_size > 1000
    markdown = (folder / f"{name}.md").read_text()
    assert report["meta"]["command"] in markdown
    for comparison in report["comparisons"]:
        assert comparison["verdict"] in markdown
    return report


def test_wide_resnet_takes_a_fractional_width():
    model = create_model("wide_resnet", depth=10, widen_factor=1.5, num_classes=10, in_chans=1)
    convs = (model.layer1[0].conv2, model.layer2[0].conv2, model.layer3[0].conv2)
    assert [m.out_channels for m in convs] == [24, 48, 96]
    assert model.name == "wrn_10_1.5"
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_match_budget_finds_the_closest_count_on_a_step_function():
    class Fake(nn.Module):  # params = 10 * round(value)
        def __init__(self, value):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(10 * round(value)))

    grid = [i / 10 for i in range(10, 200)]
    value, count = match_budget(Fake, 73, grid)
    assert count == 70 and round(value) == 7
    assert match_budget(Fake, 10_000, grid)[1] == 200  # beyond the grid: its last value


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


def test_width_depth_lab_end_to_end_with_seeds(tiny_fashion, tmp_path):
    report, folder = run_width_depth_lab(tmp_path / "wd", depths=(10, 16), budget=tiny_budget(tiny_fashion))
    models = [r["model"] for r in report["rows"]]
    report = check_written(folder, "width-depth", models, seeds=2)
    assert models[0] == "parnet_tiny" and [r["depth"] for r in report["rows"]] == [12, 8, 14]  # measured
    target = report["meta"]["match_target"]
    assert report["meta"]["matched"] == "params" and target == report["rows"][0]["params"]
    for row in report["rows"]:
        assert abs(row["params"] - target) / target < 0.03
    # each WRN against the ParNet, then the shallowest (widest) WRN against the deepest (thinnest)
    assert [(c["a"], c["b"]) for c in report["comparisons"]] == [(m, "parnet_tiny") for m in models[1:]] + [
        (models[1], models[2])]
    accs = {m: [r["test_accuracy"] for r in report["runs"] if r["model"] == m] for m in models}
    for c in report["comparisons"]:  # the reported difference is the Welch interval of these very runs
        expected = welch(accs[c["a"]], accs[c["b"]], c["a"], c["b"])
        assert (c["diff"], c["low"], c["high"]) == (expected.diff, expected.low, expected.high)


def test_a_model_that_runs_none_of_the_latency_forms_says_how_to_go_on():
    models = {"wrn_10_1": (create_model("wrn_10_1", in_chans=1), (1, 28, 28))}  # no streams to run side by side
    with pytest.raises(LabError, match="wrn_10_1 runs none of --latency-forms streams on cpu: start the lab again "
                                       "with the same --out"):
        fastest_latency(models, forms=["streams"])


def test_a_verdict_is_computed_from_the_data_and_changes_with_it():
    def runs(a, b):
        return ([{"model": "A", "test_accuracy": v} for v in a] + [{"model": "B", "test_accuracy": v} for v in b])

    apart = compare(runs([91.0, 91.4, 91.2], [88.0, 88.5, 88.2]), [("A", "B")])[0]
    assert apart["decided"] and apart["verdict"].startswith("A above B by 2.97 points")
    flipped = compare(runs([88.0, 88.5, 88.2], [91.0, 91.4, 91.2]), [("A", "B")])[0]
    assert flipped["verdict"].startswith("B above A by 2.97 points")
    level = compare(runs([91.0, 88.4, 90.2], [88.0, 91.5, 89.2]), [("A", "B")])[0]
    assert not level["decided"] and "no detectable difference at this budget" in level["verdict"]


def test_streams_lab_matched_on_flops(tiny_fashion, tmp_path):
    report, folder = run_streams_lab(tmp_path / "st", streams=(1, 3), budget=tiny_budget(tiny_fashion), match="flops")
    check_written(folder, "streams", [r["model"] for r in report["rows"]], seeds=2)
    target = report["meta"]["match_target"]
    assert report["meta"]["matched"] == "flops" and round(target / 1e6, 2) == report["rows"][1]["mflops"]
    assert all(abs(r["mflops"] * 1e6 - target) / target < 0.2 for r in report["rows"])
    assert [r["num_streams"] for r in report["rows"]] == [1, 3]
    assert report["comparisons"][0]["b"] == report["rows"][1]["model"]  # compared with the 3-stream net


def test_ensemble_lab_scores_one_ensemble_per_seed(tiny_fashion, tmp_path):
    budget = tiny_budget(tiny_fashion, latency_forms=("eager", "onnxruntime"))
    report, folder = run_ensemble_lab(tmp_path / "en", members=2, budget=budget)
    models = [r["model"] for r in report["rows"]]
    assert [r["kind"] for r in report["rows"]] == ["parnet", "member", "member", "ensemble"]
    parnet, ensemble = report["rows"][0], report["rows"][3]
    assert abs(ensemble["params"] - parnet["params"]) / parnet["params"] < 0.2
    members = [r for r in report["runs"] if r["kind"] == "member"]
    assert sorted(r["seed"] for r in members) == [0, 1, 1000, 1001]  # every member of every ensemble differs
    assert report["comparisons"][0]["a"] == ensemble["model"] and ensemble["seeds"] == 2
    for row in (parnet, ensemble):  # each timed in the faster of the two forms, which the row names
        form, threads = row["latency_form"].split(", ")
        assert form in ("eager", "onnxruntime") and threads in ("1 thread", "2 threads") and row["latency_ms"] > 0
    check_written(folder, "ensemble", models, seeds=2)


def test_blocks_lab_matches_parameters_and_pareto_groups_by_budget(tiny_fashion, tmp_path):
    _, folder = run_blocks_lab(tmp_path / "bl", block_types=("rep_sse", "plain"), budget=tiny_budget(tiny_fashion))
    report = json.loads((folder / "blocks.json").read_text())
    sse, plain = report["rows"]
    assert abs(plain["params"] - sse["params"]) / sse["params"] < 0.05  # matched, by a wider plain net
    assert plain["width_multiplier"] > sse["width_multiplier"] == 1.0
    assert plain["fused_params"] < plain["params"]  # fusion folds the plain blocks' BN into their convs

    pareto, out = run_pareto_lab(tmp_path, out=tmp_path / "front", forms=["eager"])
    assert len(pareto["rows"]) == 2 and {r["seeds"] for r in pareto["rows"]} == {2}  # seeds pooled per model
    assert {r["budget"] for r in pareto["rows"]} == {"1 epoch(s) x 64 images"}
    best = max(pareto["rows"], key=lambda r: r["test_accuracy"])
    fastest = min(pareto["rows"], key=lambda r: r["latency_ms"])
    assert best["front_acc_latency"] and fastest["front_acc_latency"]  # the extremes are never dominated
    assert all(r["latency_form"].startswith("eager, ") for r in pareto["rows"])
    assert (out / "pareto.png").is_file() and (out / "pareto.md").is_file()


def test_a_stopped_lab_reruns_only_the_missing_runs(tiny_fashion, tmp_path, monkeypatch):
    from nondeep.experiments import _lab

    budget = tiny_budget(tiny_fashion)
    first, folder = run_blocks_lab(tmp_path / "bl", block_types=("plain",), budget=budget)
    # as if the lab had been killed after this run's last checkpoint, before its summary
    (_lab.run_dir(folder, first["rows"][0]["model"], 1) / "summary.json").unlink()
    trained = []
    real_train = _lab.train
    monkeypatch.setattr(_lab, "train", lambda cfg, resume=False: trained.append(cfg.seed) or real_train(cfg, resume))
    again, _ = run_blocks_lab(tmp_path / "bl", block_types=("plain",), budget=budget)
    assert trained == [1]
    assert [r["test_accuracy"] for r in again["runs"]][0] == first["runs"][0]["test_accuracy"]


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


def test_lab_command_line_runs(tiny_fashion, tmp_path, capsys, monkeypatch):
    for module in ("nondeep.experiments._lab", "nondeep.train.loop"):  # emulated bf16 computes the same, slower
        monkeypatch.setattr(f"{module}.native_cpu_bf16", lambda: True)
    monkeypatch.setattr("torch.compile", lambda model, **_: model)  # the flag is under test here, not inductor
    assert main(["lab", "blocks", "--block-types", "plain", "--epochs", "1", "--max-train-samples", "32",
                 "--seeds", "2", "--data-dir", str(tiny_fashion), "--out", str(tmp_path / "cli"), "--no-progress",
                 "--latency-forms", "channels_last", "--cpu-bf16", "--compile"]) == 0
    printed = capsys.readouterr().out
    assert "written under" in printed
    report = json.loads((tmp_path / "cli" / "blocks.json").read_text())
    assert report["meta"]["command"].endswith(f"--max-train-samples 32 --seeds 2 --seed 0 --val-split 0.1 --data-dir "
                                              f"{tiny_fashion} --latency-forms channels_last --cpu-bf16 --compile")
    assert "training images per run in bf16 autocast (CPU), the step compiled, " in report["meta"]["budget_text"]
    assert report["rows"][0]["latency_form"].startswith("channels_last, ")
    for run in report["runs"]:  # every run trained so, and says so in its own config
        config = yaml.safe_load((Path(run["checkpoint"]).parent / "config.yaml").read_text())
        assert config["cpu_bf16"] is True and config["compile"] is True


def test_cpu_bf16_in_a_lab_is_refused_on_a_gpu_and_on_a_cpu_without_native_bf16(tiny_fashion, tmp_path, monkeypatch,
                                                                                capsys):
    argv = ["lab", "width-depth", "--depths", "10", "--epochs", "1", "--max-train-samples", "32", "--data-dir",
            str(tiny_fashion), "--out", str(tmp_path / "lab"), "--no-progress", "--cpu-bf16"]
    monkeypatch.setattr("nondeep.experiments._lab.native_cpu_bf16", lambda: True)
    assert main([*argv, "--device", "cuda"]) == 2
    monkeypatch.setattr("nondeep.experiments._lab.native_cpu_bf16", lambda: False)
    assert main([*argv, "--device", "cpu"]) == 2
    for line in capsys.readouterr().err.strip().splitlines():
        assert "--cpu-bf16 needs CPU runs on a CPU with native bf16 (AVX512-BF16 or AMX" in line
    assert not (tmp_path / "lab").exists()


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--match", "flops", "--budget-target", "1000"], "cannot match"),
    (["--val-split", "0.999"], "val_split 0.999 leaves"),
    (["--latency-forms", "graph"], "'graph' is not a form this device runs"),  # a GPU form, before training
    (["--latency-forms", "eagre"], "'eagre' is not a form this device runs"),
])
def test_a_lab_refuses_bad_options_in_one_line_and_writes_nothing(tiny_fashion, tmp_path, capsys, flags, message):
    out = tmp_path / "lab"
    code = main(["lab", "width-depth", "--depths", "10", "--epochs", "1", "--max-train-samples", "32",
                 "--data-dir", str(tiny_fashion), "--out", str(out), "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_the_readme_table_is_generated_from_the_reports(tmp_path, capsys):
    report = {"meta": {"lab": "blocks", "budget_text": "2 epoch(s), seeds [0, 1, 2]", "matched": "params",
                       "command": "nondeep lab blocks", "date": "2026-11-28T21:00:00",
                       "machine": {"cpu": "X", "cores": 2, "threads": 1, "gpu": None, "torch": "2.14"}},
              "rows": [{"model": "a", "test_accuracy": 91.234, "ci95": 0.5, "latency_ms": 2.0},
                       {"model": "b", "test_accuracy": 90.0, "ci95": None},
                       {"model": "c", "test_accuracy": 89.0, "ci95": 0.25, "latency_ms": 1.5,
                        "latency_form": "onnxruntime, 1 thread"}],
              "comparisons": [{"verdict": "a vs b: no detectable difference at this budget"}]}
    (tmp_path / "blocks.json").write_text(json.dumps(report))
    (tmp_path / "latency.json").write_text(json.dumps({"rows": []}))  # not a lab report: skipped
    benchmark = {**report, "meta": {**report["meta"], "lab": "time_to_accuracy", "command": "python benchmarks/x.py"},
                 "rows": [{"model": "a", "minutes_to_target": 2.0}]}  # the labs' format, a benchmark's rows: skipped
    (tmp_path / "time_to_accuracy.json").write_text(json.dumps(benchmark))
    assert main(["lab", "summary", str(tmp_path)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    # a report without latency_form was timed before labs chose the fastest form: fused eager
    assert len(table) == 3 and ("a 91.23 ± 0.50 (2.00 ms, fused eager); b 90.00; "
                                "c 89.00 ± 0.25 (1.50 ms, onnxruntime, 1 thread)") in table[2]
    assert "matched on params" in table[2] and "no detectable difference" in table[2]
    # a second report of a lab (another budget) under its own name links to its own markdown
    (tmp_path / "blocks-long.json").write_text(json.dumps(report))
    assert main(["lab", "summary", str(tmp_path)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert [row.split("]")[0] for row in table[2:]] == ["| [blocks-long", "| [blocks"]
    assert "| [blocks-long](docs/results/blocks-long.md) | 2 epoch(s)" in table[2]
