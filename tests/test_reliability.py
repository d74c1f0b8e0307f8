"""Fault injection: killed runs resume exactly, writes cannot half-happen, corrupt files are refused, NaN
losses stop or are skipped, and every bad input is one clear line with a non-zero exit and nothing lost."""

import dataclasses
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from nondeep.checkpoint import read_checkpoint, save_checkpoint
from nondeep.cli import main
from nondeep.errors import NondeepError
from nondeep.models import create_model
from nondeep.report import WriteError, atomic_write_bytes, remove_stale_temp_files
from nondeep.train import TrainConfig, TrainingDiverged, train

TRAIN_ARGS = ["--model", "parnet_tiny", "--epochs", "2", "--batch-size", "32", "--max-train-samples", "256",
              "--no-progress", "--num-workers", "0", "--model-kwargs", '{"width_multiplier": 0.5}', "--no-flip",
              "--crop-padding", "0", "--deterministic", "--threads", "1", "--seed", "0"]


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "nondeep.cli", "train", "--data-dir", str(data), "--out", str(out),
            *TRAIN_ARGS, *extra]


def _model_tensors(path):
    tensors, meta = read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}, meta


def _step_of(path):
    try:
        return read_checkpoint(path)[1]["step"]
    except (NondeepError, FileNotFoundError):
        return -1


@pytest.fixture(scope="module")
def reference_run(tiny_fashion, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(_train_cmd(tiny_fashion, out), check=True, capture_output=True, timeout=300,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    return out


@pytest.mark.parametrize("kill_after_step", [8, 13])  # the epoch boundary, mid-epoch 2 (8 steps an epoch)
def test_sigkill_then_resume_loses_nothing_and_ends_identically(tiny_fashion, tmp_path, reference_run,
                                                                kill_after_step):
    out = tmp_path / "run"
    last = out / "last.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for _ in range(3):  # on busy cores the poller can sleep through the rest of the run: then start it again
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(_train_cmd(tiny_fashion, out, "--checkpoint-every-steps", "1"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while _step_of(last) < kill_after_step and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.Random(kill_after_step).uniform(0, 0.05))  # land anywhere, a checkpoint write included
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            break
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed, three times"
    survived = _step_of(last)  # the last complete checkpoint: it must load and verify
    assert survived >= kill_after_step
    resumed = subprocess.run(_train_cmd(tiny_fashion, out, "--checkpoint-every-steps", "1", "--resume"), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(out.glob(".*.tmp"))  # what the kill left half-written is gone
    ours, meta = _model_tensors(last)
    ref, ref_meta = _model_tensors(reference_run / "last.safetensors")
    assert meta["step"] == ref_meta["step"] == 16
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key
    strip = lambda text: [",".join(r.split(",")[:7]) for r in text.splitlines()]  # noqa: E731  (timings differ)
    assert strip((out / "metrics.csv").read_text()) == strip((reference_run / "metrics.csv").read_text())


def test_sigkill_during_a_write_leaves_the_old_file_or_the_new_one(tmp_path):
    target = tmp_path / "result.bin"
    target.write_bytes(b"old" * 10)
    script = ("import sys; from nondeep.report import atomic_write_bytes\n"
              "print('go', flush=True)\n"
              "while True: atomic_write_bytes(sys.argv[1], b'new' * 20_000_000)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE)
    proc.stdout.readline()
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    content = target.read_bytes()
    assert content in (b"old" * 10, b"new" * 20_000_000)
    remove_stale_temp_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["result.bin"]


def test_a_failing_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = create_model("parnet_tiny", width_multiplier=0.5)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model, {"model": "parnet_tiny", "model_kwargs": {}, "step": 1})
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(WriteError, match="No space left on device.*previous file is intact"):
        save_checkpoint(path, model, {"model": "parnet_tiny", "model_kwargs": {}, "step": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]
    with pytest.raises(WriteError, match="nothing was written"):
        atomic_write_bytes(tmp_path / "new.json", b"{}")


class _NaNAfter(torch.nn.Module):
    """Wraps a model; its output turns NaN on the `bad_calls` training calls (1-based)."""

    def __init__(self, inner, bad_calls):
        super().__init__()
        self.inner, self.bad_calls, self.calls = inner, set(bad_calls), 0
        self.num_classes, self.in_chans = inner.num_classes, inner.in_chans

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls in self.bad_calls:
                return out * float("nan")
        return out


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_loss_stops_with_step_lr_and_checkpoint_or_is_skipped(tiny_fashion, tmp_path, monkeypatch, policy):
    from nondeep.train import preflight

    real_create = preflight.create_model
    monkeypatch.setattr(preflight, "create_model", lambda *a, **k: _NaNAfter(real_create(*a, **k), {11, 12}))
    cfg = TrainConfig(model="parnet_tiny", data_dir=str(tiny_fashion), out=str(tmp_path / "run"), epochs=2,
                      batch_size=32, max_train_samples=256, progress=False, num_workers=0, flip=False,
                      crop_padding=0, on_nan=policy, model_kwargs={"width_multiplier": 0.5})
    if policy == "stop":
        with pytest.raises(TrainingDiverged, match=r"step 10 \(epoch 2, lr .*last good checkpoint: .*last"):
            train(cfg)
        assert read_checkpoint(tmp_path / "run" / "last.safetensors")[1]["step"] == 8  # epoch 1 kept
    else:
        summary = train(cfg)
        assert summary["nan_steps_skipped"] == 2 and summary["epochs"] == 2
        assert summary["steps"] == 16  # a skipped batch is a step of the schedule, as any other
        # a third epoch resumed from the checkpoint keeps the count (its own 8 calls stay clear of 11 and 12)
        resumed = train(dataclasses.replace(cfg, epochs=3), resume=True)
        assert resumed["nan_steps_skipped"] == 2 and resumed["epochs"] == 3 and resumed["steps"] == 24


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_checkpoint_and_exit_cleanly(tiny_fashion, tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(tiny_fashion, out, "--epochs", "50"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 240
    while _step_of(out / "last.safetensors") < 8 and time.monotonic() < deadline:  # after epoch 1
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == sig.name and summary["epochs"] < 50
    assert _step_of(out / "last.safetensors") >= 8


# --- bad input: one line, exit 2, nothing overwritten ------------------------------------------------------

def _write_image_folder(root, classes):
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")  # trained once for the module; each case checks it is left untouched
def trained(tiny_fashion, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--data-dir", str(tiny_fashion), "--out", str(out), *TRAIN_ARGS, "--epochs", "1"]) == 0
    return out


def _cases(tiny_fashion, trained, tmp_path):
    corrupt_idx = tmp_path / "corrupt"
    corrupt_idx.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (corrupt_idx / name).write_bytes(b"\x00\x00\x08\x03garbage")
    corrupt_ckpt = tmp_path / "corrupt.safetensors"
    corrupt_ckpt.write_bytes((trained / "last.safetensors").read_bytes()[:5000])
    bad_key, bad_type = tmp_path / "bad_key.yaml", tmp_path / "bad_type.yaml"
    bad_key.write_text("epoch: 3\n")
    bad_type.write_text("epochs: three\n")
    three_classes = _write_image_folder(tmp_path / "three", ["a", "b", "c"])
    one_class = _write_image_folder(tmp_path / "one", ["a"])
    new_out = str(tmp_path / "new")
    data = ["--data-dir", str(tiny_fashion)]
    return {
        "unknown model": (["train", "--model", "parnet_tinny", *data, "--out", new_out], "did you mean parnet_tiny"),
        "corrupt IDX file": (["train", "--data-dir", str(corrupt_idx), "--out", new_out], "corrupt|truncated"),
        "one-class ImageFolder": (["train", "--data", str(one_class), "--out", new_out], "class"),
        "unknown config key": (["train", "--config", str(bad_key), "--out", new_out], "did you mean 'epochs'"),
        "config value of the wrong type": (["train", "--config", str(bad_type), "--out", new_out], "must be int"),
        "negative epochs": (["train", "--epochs", "-2", "--out", new_out], "epochs must be >= 1"),
        "batch size 0": (["train", "--batch-size", "0", "--out", new_out], "batch sizes must be >= 1"),
        "existing run without --resume": (["train", *data, "--out", str(trained)], "--resume"),
        "corrupt checkpoint": (["eval", str(corrupt_ckpt), *data], "corrupt or truncated"),
        "missing checkpoint": (["eval", str(tmp_path / "nope.safetensors")], "does not exist"),
        "class count that does not fit": (["eval", str(trained / "last.safetensors"), "--data", str(three_classes)],
                                          "trained for 10 classes"),
        "resume with no checkpoint": (["train", *data, "--out", str(tmp_path / "empty"), "--resume"],
                                      "no checkpoint"),
    }


CASES = ["unknown model", "corrupt IDX file", "one-class ImageFolder", "unknown config key",
         "config value of the wrong type", "negative epochs", "batch size 0", "existing run without --resume",
         "corrupt checkpoint", "missing checkpoint", "class count that does not fit", "resume with no checkpoint"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(case, tiny_fashion, trained, tmp_path, capsys):
    argv, message = _cases(tiny_fashion, trained, tmp_path)[case]
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("nondeep: error:"), err
    import re
    assert re.search(message, err), err
    assert {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()} == before  # nothing overwritten
    assert not (tmp_path / "new").exists()  # a refused run leaves no folder behind


def test_missing_dataset_names_the_three_ways(tmp_path, monkeypatch, capsys):
    from nondeep.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NONDEEP_DATA", raising=False)

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(fashion_mnist, "fetch_url", offline)
    assert main(["train", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in err and "NONDEEP_DATA" in err
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_read_while_another_process_rewrites_it_is_always_whole(tmp_path):
    # The race behind a CI failure: the reader saw the header of one version and the size of the next.
    path = tmp_path / "last.safetensors"
    script = ("import sys, torch; from nondeep.checkpoint import save_checkpoint\n"
              "from nondeep.models import create_model\n"
              "model = create_model('parnet_tiny', width_multiplier=0.5)\n"
              "step = 0\n"
              "while True:\n"
              "    step += 1  # the header grows by a digit now and then, so the versions differ in size\n"
              "    save_checkpoint(sys.argv[1], model, {'model': 'parnet_tiny', 'model_kwargs': {}, 'step': step,\n"
              "                    'note': 'x' * (step % 7)})\n"
              "    if step == 1: print('go', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        proc.stdout.readline()
        steps = [read_checkpoint(path)[1]["step"] for _ in range(300)]
    finally:
        proc.kill()
        proc.wait()
    assert len(set(steps)) > 1, "the writer never replaced the file during the reads"
