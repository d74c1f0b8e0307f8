"""The scaling lab (issue 17): the grown models land on their FLOP levels and all ParNets measure depth 12 (on
the meta device, nothing trained); the lab runs end to end on tiny data with 2 seeds and writes intervals and
verdicts; bad options are refused before anything is written."""

import importlib
import json

import pytest
import torch

from nondeep import measure
from nondeep.cli import main
from nondeep.experiments import scaling as scaling_module
from nondeep.experiments._lab import MATCH_TOLERANCE, Budget, LabError, cost_of
from nondeep.experiments.scaling import (DEPTH, depth12_stream_counts, parse_joint, plan_scaling, realized_shares,
                                         run_scaling_lab)
from nondeep.models import create_model
from nondeep.stats import welch
from nondeep.train import evaluate_checkpoint

from test_labs import check_written


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, num_classes=10, in_chans=1, **kwargs)


def test_grown_models_hit_their_flop_levels_and_every_parnet_measures_depth_12():
    plan = plan_scaling("parnet_tiny", levels=(1, 2))
    base_flops = cost_of("flops", (1, 28, 28))(meta_model("parnet_tiny"))
    trained = [p for p in plan if p.label is not None]
    for p in trained:  # FLOPs and depth measured again here, from the builder's arguments
        if p.axis == "depth":
            model, side = meta_model("wide_resnet", depth=p.wrn_depth, widen_factor=p.widen_factor), 28
        else:
            model = meta_model("parnet_tiny", width_multiplier=p.point.width_multiplier,
                               num_streams=p.point.num_streams)
            side = p.point.image_size
            assert measure.depth(model, (1, side, side)) == DEPTH
        assert cost_of("flops", (1, side, side))(model) == p.flops
        assert abs(p.flops - p.level * base_flops) <= MATCH_TOLERANCE * p.level * base_flops
    at_1x = {p.label for p in trained if p.level == 1 and p.axis != "depth"}
    assert at_1x == {"parnet_tiny"}  # the ParNet axes share the base at 1x
    by_axis = {(p.axis, p.level): p for p in plan}
    assert by_axis[("width", 2.0)].point.image_size == 28 and by_axis[("width", 2.0)].point.width_multiplier > 1
    resolution_2x = by_axis[("resolution", 2.0)].point
    assert resolution_2x.width_multiplier == 1.0 and resolution_2x.image_size == 40
    deep = [p for p in plan if p.axis == "depth"]
    assert deep[0].widen_factor == deep[1].widen_factor and deep[1].wrn_depth > deep[0].wrn_depth  # depth alone grows
    # each added stream adds a fusion to every path (1: 8, 2: 11, 3: 12, 4: 13 at 32x32), so only 3 is depth 12
    assert [measure.depth(meta_model("parnet_tiny", num_streams=n)) for n in (1, 2, 3, 4)] == [8, 11, 12, 13]
    assert depth12_stream_counts("parnet_tiny", 28) == [3]
    streams_2x = by_axis[("streams", 2.0)]
    assert streams_2x.label is None and "depth 12" in streams_2x.reason and "1.00x" in streams_2x.reason
    joint = by_axis[("joint", 2.0)]
    shares = realized_shares("parnet_tiny", joint.point)
    assert shares["streams"] == 0.0 and sum(shares.values()) == pytest.approx(1.0, abs=0.01)


def test_joint_shares_are_normalised_and_width_must_take_part():
    assert parse_joint("2:1:1") == (0.5, 0.25, 0.25)
    for bad in ("0:1:1", "1:1", "a:b:c", "1:-1:1"):
        with pytest.raises(LabError, match="--joint"):
            parse_joint(bad)


def test_scaling_lab_end_to_end_with_two_seeds(tiny_fashion, tmp_path, monkeypatch):
    """At 2x: the resolution model trains on 40x40 images and is compared with the WRN grown by depth; the
    streams axis cannot reach 2x at depth 12, so it is listed and not trained (4 runs in all, to stay fast)."""
    budget = Budget(epochs=1, max_train_samples=64, seeds=2, data_dir=str(tiny_fashion), progress=False,
                    latency_forms=("eager",))
    report, folder = run_scaling_lab(tmp_path / "sc", levels=(2,), axes=("resolution", "streams"), budget=budget)
    models = ["resolution 40px", "WRN-16-1.85"]
    check_written(folder, "scaling", models, seeds=2)
    rows = {r["model"]: r for r in report["rows"]}
    assert rows["resolution 40px"]["depth"] == DEPTH  # measured by the trainer, on the trained model
    assert all(rows[m]["latency_ms"] > 0 for m in models)
    assert (rows["resolution 40px"]["image_size"], rows["resolution 40px"]["mflops"]) == (40, round(
        cost_of("flops", (1, 40, 40))(meta_model("parnet_tiny")) / 1e6, 2))
    summary = json.loads((folder / "resolution_40px" / "seed0" / "summary.json").read_text())
    assert summary["config"]["image_size"] == 40
    asked = {}  # `nondeep evaluate` reads the test split at the size the checkpoint was trained at
    evaluate_module = importlib.import_module("nondeep.train.evaluate")  # the module (the package exports a function)
    real_build_loaders = evaluate_module.build_loaders
    monkeypatch.setattr(evaluate_module, "build_loaders",
                        lambda *a, **k: asked.update(k) or real_build_loaders(*a, **k))
    evaluated = evaluate_checkpoint(summary["checkpoint"], data_dir=str(tiny_fashion))
    assert asked["image_size"] == 40 and evaluated["eval_top1"] == pytest.approx(summary["test_accuracy"])
    assert [(c["a"], c["b"]) for c in report["comparisons"]] == [("resolution 40px", "WRN-16-1.85")]
    accs = {m: [r["test_accuracy"] for r in report["runs"] if r["model"] == m] for m in models}
    expected = welch(accs["resolution 40px"], accs["WRN-16-1.85"], "resolution 40px", "WRN-16-1.85")
    assert (report["comparisons"][0]["low"], report["comparisons"][0]["high"]) == (expected.low, expected.high)
    mean = {m: sum(v) / len(v) for m, v in accs.items()}
    (leader,) = report["leaders"]  # the most accurate model of the level, computed from the runs
    assert leader["best"] == max(models, key=lambda m: (mean[m], m == "resolution 40px"))
    assert [p["model"] for p in report["plan"] if p["axis"] == "streams"] == [None]
    markdown = (folder / "scaling.md").read_text()
    assert "Most accurate axis at each compute level" in markdown and "streams at 2x: no stream count" in markdown
    assert (folder / "scaling-latency.png").stat().st_size > 1000


@pytest.mark.parametrize("flags, message", [
    (["--levels", "0.5", "2"], "--levels are multiples of the base's FLOPs"),
    (["--joint", "0:1:1"], "--joint takes width:resolution:streams shares"),
])
def test_scaling_refuses_bad_options_in_one_line_and_writes_nothing(tiny_fashion, tmp_path, capsys, flags, message):
    out = tmp_path / "lab"
    code = main(["lab", "scaling", "--quick", "--data-dir", str(tiny_fashion), "--out", str(out), "--no-progress",
                 *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_the_readme_row_of_the_scaling_lab_leads_with_the_most_accurate_axis_per_level(tmp_path, capsys):
    versus = {"verdict": "resolution 40px vs WRN-16-1.85: no detectable difference at this budget (+0.1 points)"}
    report = {"meta": {"lab": "scaling", "budget_text": "2 epoch(s)", "command": "nondeep lab scaling",
                       "date": "2026-11-29T01:00:00",
                       "machine": {"cpu": "X", "cores": 2, "threads": 1, "gpu": None, "torch": "2.14"}},
              "rows": [{"model": "resolution 40px", "test_accuracy": 80.0, "ci95": 1.0}],
              "leaders": [{"level": 2.0, "best": "resolution 40px", "versus_runner_up": versus}],
              "comparisons": [{"verdict": "resolution 40px vs WRN-16-1.85: computed"}]}
    (tmp_path / "scaling.json").write_text(json.dumps(report))
    assert main(["lab", "summary", str(tmp_path)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[2]
    assert row.startswith("| [scaling](docs/results/scaling.md)")
    leader = f"most accurate at 2x: resolution 40px ({versus['verdict']})"
    assert f"{leader}; resolution 40px vs WRN-16-1.85: computed" in row


@pytest.mark.parametrize("device, levels", [("cpu", (1.0, 2.0)), ("cuda", (1.0, 2.0, 4.0))])
def test_default_levels_follow_the_device(monkeypatch, device, levels):
    """A CPU cannot afford the 4x level at a budget that learns anything, so its default stops at 2x."""
    seen = []

    def planned(base, levels, axes, joint):
        seen.append(tuple(levels))
        raise LabError("planned")
    monkeypatch.setattr(scaling_module, "plan_scaling", planned)
    with pytest.raises(LabError, match="planned"):
        run_scaling_lab(budget=Budget(device=device))
    assert seen == [levels]
