"""The main job, `nondeep quickstart`, end to end on tiny data that the tests write."""

import json

from nondeep.cli import main
from nondeep.experiments.quickstart import QUICKSTART_MODELS


def test_quickstart_trains_both_models_and_writes_the_table(tiny_fashion, tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--data-dir", str(tiny_fashion), "--max-train-samples", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| model" in printed and str(out) in printed
    report = json.loads((out / "quickstart.json").read_text())
    rows = {row["model"]: row for row in report["rows"]}
    assert set(rows) == set(QUICKSTART_MODELS)
    assert rows["parnet_tiny"]["depth"] == 12 and rows["preact_resnet_20"]["depth"] == 20  # measured
    for row in rows.values():
        assert abs(row["fused_test_accuracy"] - row["test_accuracy"]) < 1
        summary = json.loads((out / row["model"] / "summary.json").read_text())
        assert row["test_accuracy"] == summary["test_accuracy"] and row["params_m"] == summary["params"] / 1e6
        assert row["latency_ms_bs1"] > 0 and row["fused_latency_ms_bs1"] > 0  # timings: their sizes are not fixed
    assert (out / "quickstart.md").is_file() and (out / "quickstart.png").stat().st_size > 1000
    meta = report["meta"]  # its provenance: the command as typed and the machine it ran on
    assert meta["command"] == f"nondeep quickstart --out {out} --data-dir {tiny_fashion} --max-train-samples 64"
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["torch"] == meta["torch"]
    assert meta["total_seconds"] > 0 and f"- command: `{meta['command']}` (seed 0); took " in (
        out / "quickstart.md").read_text()
    for name in QUICKSTART_MODELS:
        assert (out / name / "summary.json").is_file()

