"""The trainer on tiny data that the tests write: learning, checkpoints, resume, fused evaluation, errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from nondeep import NondeepError
from nondeep.checkpoint import load_model, read_checkpoint
from nondeep.cli import main
from nondeep.train import ConfigError, TrainConfig, config_from_dict, evaluate_checkpoint, load_config, train


def _cfg(tiny_fashion, out, **kw):
    # The synthetic classes are squares at fixed places: no flip (it would swap them), no crop.
    base = dict(model="parnet_tiny", data="fashion-mnist", data_dir=str(tiny_fashion), out=str(out), epochs=2,
                batch_size=32, lr=0.1, progress=False, num_workers=0, seed=0,
                model_kwargs={"width_multiplier": 0.5}, flip=False, crop_padding=0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_learns_and_writes_a_run_folder(tiny_fashion, tmp_path):
    summary = train(_cfg(tiny_fashion, tmp_path / "run", epochs=3))
    assert summary["test_accuracy"] > 50.0  # chance is 10%
    assert summary["fused_test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=0.5)
    assert summary["depth"] == 12 and summary["epochs"] == 3 and summary["train_seconds"] > 0
    for name in ("last.safetensors", "best.safetensors", "metrics.csv", "summary.json", "config.yaml", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("test_accuracy", "fused_test_accuracy", "epochs", "model", "params", "depth", "train_seconds"):
        assert key in on_disk
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,train_top1,eval_loss,eval_top1,eval_top5,lr")
    check_tensorboard_log(tmp_path / "run" / "tensorboard", on_disk)


def check_tensorboard_log(folder, summary):
    """With tensorboard installed (the dev extra), each epoch's metrics are in the event file as well."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    eval_top1 = events.Scalars("eval_top1")
    assert [e.step for e in eval_top1] == [1, 2, 3]
    assert eval_top1[-1].value == pytest.approx(summary["val_accuracy"], abs=1e-3)  # eval is validation
    history = read_checkpoint(summary["checkpoint"])[1]["history"]
    assert set(events.Tags()["scalars"]) == set(history[-1]) - {"epoch"}  # every figure of a row, by epoch


def test_checkpoint_round_trip_and_fused_eval(tiny_fashion, tmp_path):
    summary = train(_cfg(tiny_fashion, tmp_path / "run", epochs=1))
    model, meta = load_model(summary["checkpoint"])
    assert meta["model"] == "parnet_tiny" and meta["epoch"] == 1 and not model.training
    plain = evaluate_checkpoint(summary["checkpoint"], data_dir=str(tiny_fashion))
    fused = evaluate_checkpoint(summary["checkpoint"], data_dir=str(tiny_fashion), fused=True)
    assert plain["eval_top1"] == pytest.approx(summary["test_accuracy"])
    assert fused["eval_top1"] == pytest.approx(plain["eval_top1"], abs=0.5)


@pytest.mark.parametrize("stop_at_step", [5, 7, 11])  # mid-epoch 1, the last step of epoch 1, mid-epoch 2
def test_sigterm_checkpoints_and_resume_is_exact(tiny_fashion, tmp_path, monkeypatch, stop_at_step):
    """SIGTERM at a step boundary saves a checkpoint and stops; --resume then ends exactly where an
    uninterrupted deterministic run ends (same weights, same metrics)."""
    import signal

    from nondeep.train import loop

    kw = dict(epochs=2, deterministic=True, max_train_samples=256, batch_size=32)  # 8 steps an epoch
    straight = train(_cfg(tiny_fashion, tmp_path / "a", **kw))

    real_lr_at = loop.lr_at

    def lr_at_then_signal(step, *args):
        if step == stop_at_step:
            signal.raise_signal(signal.SIGTERM)
        return real_lr_at(step, *args)

    monkeypatch.setattr(loop, "lr_at", lr_at_then_signal)
    stopped = train(_cfg(tiny_fashion, tmp_path / "b", **kw))
    assert stopped["stopped_by"] == "SIGTERM"
    _, meta = read_checkpoint(tmp_path / "b" / "last.safetensors")
    assert meta["step"] == stop_at_step + 1  # nothing lost: the step in flight finished and was saved
    monkeypatch.setattr(loop, "lr_at", real_lr_at)
    resumed = train(_cfg(tiny_fashion, tmp_path / "b", **kw), resume=True)

    a, _ = read_checkpoint(tmp_path / "a" / "last.safetensors")
    b, _ = read_checkpoint(tmp_path / "b" / "last.safetensors")
    for key in a:
        if key.startswith("model."):
            assert torch.equal(a[key], b[key]), key
    assert resumed["test_accuracy"] == straight["test_accuracy"] and resumed["epochs"] == 2
    hist_a = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    hist_b = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    strip = lambda rows: [",".join(r.split(",")[:7]) for r in rows]  # noqa: E731  (timings differ)
    assert strip(hist_a) == strip(hist_b)


def test_existing_run_is_not_overwritten(tiny_fashion, tmp_path):
    train(_cfg(tiny_fashion, tmp_path / "run", epochs=1))
    before = (tmp_path / "run" / "last.safetensors").read_bytes()
    with pytest.raises(NondeepError, match="--resume"):
        train(_cfg(tiny_fashion, tmp_path / "run", epochs=1))
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == before


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        config_from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="must be int"):
        config_from_dict({"epochs": "three"})
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        config_from_dict({"epochs": -1})
    with pytest.raises(ConfigError, match="batch sizes"):
        config_from_dict({"batch_size": 0})
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1\nschedule: step\n")
    cfg = load_config(path)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.schedule == "step"


def test_cli_train_eval_and_errors(tiny_fashion, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--model", "parnet_tiny", "--data", "fashion-mnist", "--data-dir", str(tiny_fashion),
            "--epochs", "1", "--batch-size", "64", "--max-train-samples", "128", "--out", str(out), "--no-progress",
            "--model-kwargs", '{"width_multiplier": 0.5}', "--num-workers", "0", "--no-flip",
            "--crop-padding", "0"]
    assert main(args) == 0
    assert "test_accuracy" in capsys.readouterr().out
    assert main(["eval", str(out / "last.safetensors"), "--fused", "--data-dir", str(tiny_fashion)]) == 0
    assert main(args) == 2  # the run folder exists: refuse, keep it
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--model", "parnet_tinyy", "--data-dir", str(tiny_fashion), "--out", str(tmp_path / "x")]) == 2
    assert "did you mean parnet_tiny" in capsys.readouterr().err
    assert main(["train", "--epochs", "0", "--out", str(tmp_path / "y")]) == 2


def test_class_count_that_does_not_fit_the_checkpoint(tiny_fashion, tmp_path):
    summary = train(_cfg(tiny_fashion, tmp_path / "run", epochs=1, max_train_samples=64))
    with pytest.raises(NondeepError, match="trained for 10 classes, not 5"):
        load_model(summary["checkpoint"], num_classes=5)


def test_ddp_two_processes_equal_one_process_at_the_same_global_batch(tiny_fashion, tmp_path):
    """torchrun with 2 CPU processes (gloo) at 16 images a rank trains the same weights as one process at 32.
    A BN-free model and 32 training images, so every step's global batch is the whole set in both runs:
    what differs is only the order of the float sums (DDP averages the two ranks' gradients)."""
    recipe = dict(model="mimic_snn_1k", epochs=3, max_train_samples=32, lr=0.05, val_split=0.0, flip=False,
                  crop_padding=0, label_smoothing=0.1, deterministic=True, threads=1, num_workers=0, progress=False)
    single = train(TrainConfig(data_dir=str(tiny_fashion), out=str(tmp_path / "one"), batch_size=32, **recipe))
    out = tmp_path / "ddp"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in recipe.items() if not isinstance(v, bool)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",  # a free port
           "-m", "nondeep.cli", "train", "--data-dir", str(tiny_fashion), "--out", str(out), "--batch-size", "16",
           "--no-flip", "--deterministic", "--no-progress", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    ddp, meta = read_checkpoint(out / "last.safetensors")
    one, one_meta = read_checkpoint(tmp_path / "one" / "last.safetensors")
    assert meta["step"] == one_meta["step"] == 3  # one step an epoch on each rank
    for key in one:
        if key.startswith("model."):
            torch.testing.assert_close(ddp[key], one[key], rtol=1e-5, atol=1e-6)
    assert summary["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=100 / 256 + 1e-9)

