"""benchmarks/bench_cpu_bf16.py: float32 and bf16 runs of one model on the same seeds, the bf16 runs trained in
bf16 autocast, and a verdict computed from their test accuracies; refused where the CPU has no native bf16."""

import json

import pytest
import torch

from conftest import load_script
from nondeep.experiments._lab import Budget
from nondeep.stats import welch
from nondeep.train import loop

script = load_script("bench_cpu_bf16")


def test_the_two_precisions_train_on_the_same_seeds_and_get_a_welch_verdict(tiny_fashion, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "native_cpu_bf16", lambda: True)  # emulated bf16 computes the same, only slower
    dtypes = []
    real = loop.build_model

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype) if m.training else None)
        return model

    monkeypatch.setattr(loop, "build_model", build)
    budget = Budget(epochs=1, max_train_samples=64, seeds=2, data_dir=str(tiny_fashion), progress=False, workers=1,
                    device="cpu", threads=1)
    script.compare_precisions(tmp_path / "runs", "parnet_tiny", budget, str(tmp_path / "results"),
                              ["python", "bench_cpu_bf16.py"])
    report = json.loads((tmp_path / "results" / "cpu_bf16.json").read_text())
    assert [r["model"] for r in report["rows"]] == ["parnet_tiny float32", "parnet_tiny bf16"]
    assert [(r["model"], r["seed"]) for r in report["runs"]] == [
        ("parnet_tiny float32", 0), ("parnet_tiny float32", 1), ("parnet_tiny bf16", 0), ("parnet_tiny bf16", 1)]
    assert dtypes == [torch.float32] * 2 + [torch.bfloat16] * 2  # one step a run (57 training images, batch 256)
    acc = {m: [r["test_accuracy"] for r in report["runs"] if r["model"] == m]
           for m in ("parnet_tiny float32", "parnet_tiny bf16")}
    (comparison,) = report["comparisons"]
    expected = welch(acc["parnet_tiny bf16"], acc["parnet_tiny float32"], "parnet_tiny bf16", "parnet_tiny float32")
    assert (comparison["diff"], comparison["low"], comparison["high"]) == (expected.diff, expected.low, expected.high)
    assert comparison["verdict"] in (tmp_path / "results" / "cpu_bf16.md").read_text()
    for row in report["rows"]:
        rates = [r["train_images_per_sec"] for r in report["runs"] if r["model"] == row["model"]]
        assert all(rate > 0 for rate in rates) and row["train_images_per_sec"] == pytest.approx(sum(rates) / 2, abs=0.1)


def test_a_cpu_without_native_bf16_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(script, "native_cpu_bf16", lambda: False)
    monkeypatch.setattr("sys.argv", ["bench_cpu_bf16.py", "--runs", str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as exit_:
        script.main()
    assert exit_.value.code == 2 and "this CPU has no native bf16" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
