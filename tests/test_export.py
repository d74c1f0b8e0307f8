"""ONNX export: the fused model round-trips through ONNX Runtime, dynamic batch, the CLI, clear errors."""

import sys

import numpy as np
import pytest
import torch
from conftest import randomize_bn

from nondeep import NondeepError, create_model, reparameterize_model
from nondeep.export import export_onnx, onnx_bytes, ort_session

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

FAST = dict(warmup=1, repeats=3)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_parnet_tiny_round_trip_matches_pytorch(tmp_path):
    model = randomize_bn(create_model("parnet_tiny")).eval()
    path = tmp_path / "tiny.onnx"
    result = export_onnx(model, path, **FAST)
    assert path.is_file() and result["path"] == str(path)
    assert result["max_abs_err"] < 1e-4 and result["max_abs_output"] > 1e-2
    assert result["torch_latency_ms"] > 0 and result["ort_latency_ms"] > 0
    # Independently of export_onnx's own check: a fresh input, the fused and the unfused model.
    x = torch.randn(1, 3, 32, 32)
    got = _session(path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - reparameterize_model(model)(x).numpy()).max() < 1e-4
        assert np.abs(got - model(x).numpy()).max() < 1e-4
    # The graph is the fused one: one Conv node per conv of the reparameterised model, none per branch.
    proto = onnx.load(str(path))
    fused_convs = sum(isinstance(m, torch.nn.Conv2d) for m in reparameterize_model(model).modules())
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == fused_convs
    assert fused_convs < sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert {p.key: p.value for p in proto.metadata_props}["nondeep_model"] == "parnet_tiny"


def test_dynamic_batch_runs_batch_three(tmp_path):
    path = tmp_path / "dyn.onnx"
    result = export_onnx("parnet_tiny", path, input_size=(1, 28, 28), dynamic_batch=True,
                         model_kwargs={"in_chans": 1, "num_classes": 7}, **FAST)
    assert result["checked_batch_sizes"] == [1, 3] and result["max_abs_err"] < 1e-4
    out = _session(path).run(None, {"input": np.random.randn(3, 1, 28, 28).astype(np.float32)})[0]
    assert out.shape == (3, 7)
    fixed = tmp_path / "fixed.onnx"
    export_onnx("parnet_tiny", fixed, check=False)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="index: 0 Got: 3 Expected: 1"):
        _session(fixed).run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})


def test_cli_export_writes_the_file(tmp_path, capsys):
    from nondeep.cli import main

    out = tmp_path / "sub" / "model.onnx"
    assert main(["export", "parnet_tiny", "--format", "onnx", "--out", str(out), "--threads", "1",
                 "--repeats", "3"]) == 0
    assert out.is_file() and out.stat().st_size > 100_000
    text = capsys.readouterr().out
    assert "max abs error" in text and "ONNX Runtime" in text and "PyTorch" in text
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_cli_export_can_name_the_fastest_form_on_this_cpu(tmp_path, capsys):
    from nondeep.cli import main
    from nondeep.inference import FORMS

    out = tmp_path / "model.onnx"
    assert main(["export", "parnet_tiny", "--out", str(out), "--threads", "1", "--repeats", "3",
                 "--compare-forms"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("fastest form on this CPU (nondeep.inference.optimize,") and out.is_file()
    chosen = line.split("): ")[1].split(" ")[0].rstrip(",")
    assert chosen in FORMS or chosen.split("(")[0] in FORMS, line


def test_missing_onnxruntime_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(NondeepError, match=r"pip install nondeep\[onnx\]"):
        export_onnx("parnet_tiny", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_failed_check_writes_nothing_and_bad_names_are_clear(tmp_path):
    with pytest.raises(NondeepError, match="nothing written"):
        export_onnx(randomize_bn(create_model("parnet_tiny")), tmp_path / "x.onnx", tolerance=0.0, **FAST)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(NondeepError, match="no such checkpoint"):
        export_onnx("runs/missing/best.safetensors", tmp_path / "y.onnx")


def test_checkpoint_path_is_loaded(tmp_path):
    from nondeep import checkpoint

    model = randomize_bn(create_model("parnet_tiny", in_chans=1, num_classes=10))
    ckpt = tmp_path / "best.safetensors"
    checkpoint.save_checkpoint(ckpt, model, {"model": "parnet_tiny", "model_kwargs": {"in_chans": 1, "num_classes": 10},
                                             "data": {"in_chans": 1, "image_size": [28, 28]}})
    result = export_onnx(ckpt, tmp_path / "best.onnx", **FAST)
    assert result["model"] == "parnet_tiny" and result["input_size"] == [1, 28, 28]
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert np.abs(_session(tmp_path / "best.onnx").run(None, {"input": x.numpy()})[0] - expected).max() < 1e-4


@pytest.mark.parametrize("spin_after_run, entry", [(False, "1"), (True, "0")])
def test_sessions_stop_their_threads_spinning_after_a_run_unless_asked(spin_after_run, entry):
    """Left spinning, a session's threads slow the next session's runs up to 4x (docs/results/ort_spinning.md):
    the latency forms are timed side by side, so nondeep's sessions stop them by default."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()).eval()
    session = ort_session(onnx_bytes(model, torch.randn(1, 1, 5, 5)), threads=1, spin_after_run=spin_after_run)
    assert session.get_session_options().get_session_config_entry("session.force_spinning_stop") == entry
    assert session.get_session_options().intra_op_num_threads == 1
