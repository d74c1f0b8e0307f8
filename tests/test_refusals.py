"""Refusals through the real command line: each mistake is one line `nondeep: error: ...`, exit status 2, and
every file that was there before keeps its bytes (sha256) with nothing new written. Also: one run a folder
(the lock), Ctrl-C, the metadata checksum, and ImageFolder trees of small images end to end."""

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nondeep as nondeep_package

from nondeep.checkpoint import CheckpointError, read_checkpoint, read_safetensors, save_checkpoint
from nondeep.cli import main
from nondeep.errors import NondeepError
from nondeep.models import create_model

TINY = ["--model", "parnet_tiny", "--model-kwargs", '{"width_multiplier": 0.5}', "--batch-size", "32",
        "--max-train-samples", "256", "--no-progress", "--num-workers", "0", "--threads", "1", "--seed", "0"]
# the subprocesses import the nondeep under test from any working directory (PYTHONPATH=src is relative)
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
    [str(Path(nondeep_package.__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]))


def nondeep(*argv, cwd=None):
    """The CLI run in this process, as `python -m nondeep.cli argv` runs it: exit code, stdout, stderr. (A new
    interpreter a call would cost seconds of imports; the tests that need a process of their own, for signals,
    locks or peak memory, start one.)"""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        os.chdir(cwd or here)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exit_:  # argparse's own refusals
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def snapshot(*roots):
    """sha256 of every file under `roots` (hidden ones included)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file()}


def assert_refused(argv, message, watch, cwd=None, absent=()):
    """`nondeep argv` exits 2 with one line matching `message`; the files under `watch` are unchanged and
    none was added; the paths in `absent` were not made."""
    before = snapshot(*watch)
    result = nondeep(*argv, cwd=cwd)
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, err[-2000:])
    assert "\n" not in err and err.startswith("nondeep: error: "), err[-2000:]
    assert re.search(message, err), err
    assert snapshot(*watch) == before
    for path in absent:
        assert not Path(path).exists(), path
    return err


@pytest.fixture(scope="module")
def trained(tiny_fashion, tmp_path_factory):
    """One tiny run (1 epoch) that the refusals below try to misuse."""
    out = tmp_path_factory.mktemp("trained") / "run"
    result = nondeep("train", "--data-dir", tiny_fashion, "--out", out, *TINY, "--epochs", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _image_tree(root, classes, n, size=(28, 28), mode="L", seed=0):
    """root/<class>/<i>.png: class c is a bright square at its own place on noise (learnable)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 90, (size[1], size[0], channels), dtype=np.uint8)
            pixels[4:10, 4 + 6 * c:10 + 6 * c] = 230
            Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(root / name / f"{i}.png")
    return root


# --- --model-kwargs and options that do not fit the data: refused before the run folder is made ----------

@pytest.mark.parametrize("kwargs, message", [
    ('{"width_multiplier": 0.5, "widht": 2}', r"--model-kwargs do not fit parnet_tiny .*'widht'"),
    ('{"width_multiplier": 0.5, "num_classes": 3}', r"num_classes=3 does not fit fashion-mnist, which has 10 classes"),
    ('{"width_multiplier": 0.5, "in_chans": 3}', r"in_chans=3 does not fit fashion-mnist, which has 1 image channels"),
], ids=["unknown key", "num_classes", "in_chans"])
def test_model_kwargs_that_do_not_fit_are_refused_before_the_run_folder(tiny_fashion, tmp_path, kwargs, message):
    new = tmp_path / "new"
    argv = ["train", "--data-dir", tiny_fashion, "--out", new, *TINY, "--model-kwargs", kwargs]
    assert_refused(argv, message, watch=[tiny_fashion], absent=[new])


def test_a_channel_count_on_a_small_dataset_is_refused(tiny_fashion, tmp_path):
    """(--image-size resizes an in-memory set: tests/test_data.py; a channel count of its own is refused.)"""
    new = tmp_path / "new"
    argv = ["train", "--data-dir", tiny_fashion, "--out", new, *TINY, "--in-chans", "3"]
    assert_refused(argv, r"fashion-mnist is 1-channel.*ImageFolder trees", watch=[tiny_fashion], absent=[new])


@pytest.mark.parametrize("flag, value, message", [("--in-chans", "2", "in_chans must be 1"),
                                                  ("--image-size", "4", "image_size must be >= 8")])
def test_out_of_range_image_options_are_refused(tmp_path, flag, value, message):
    assert_refused(["train", "--out", tmp_path / "new", flag, value], message, watch=[tmp_path],
                   absent=[tmp_path / "new"])


def test_cpu_bf16_on_a_cpu_without_native_bf16_is_refused(tiny_fashion, tmp_path, monkeypatch):
    monkeypatch.setattr("nondeep.train.loop.native_cpu_bf16", lambda: False)
    new = tmp_path / "new"
    argv = ["train", "--data-dir", tiny_fashion, "--out", new, *TINY, "--device", "cpu", "--cpu-bf16"]
    assert_refused(argv, r"--cpu-bf16: this CPU has no native bf16 \(AVX512-BF16 or AMX\): drop --cpu-bf16",
                   watch=[tiny_fashion], absent=[new])


# --- paths that cannot be a run folder ------------------------------------------------------------------

def test_out_that_is_a_file_or_under_a_file_is_refused(tiny_fashion, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    data = ["--data-dir", tiny_fashion, *TINY]
    assert_refused(["train", *data, "--out", a_file], r"is a file, not a folder", watch=[tmp_path])
    assert_refused(["train", *data, "--out", a_file / "run"], r"notes.txt is a file", watch=[tmp_path])


def test_a_folder_of_someone_elses_files_is_refused_unless_forced(tiny_fashion, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in (("config.yaml", "my: config\n"), ("metrics.csv", "a,b\n1,2\n"), ("summary.json", "{}")):
        (out / name).write_text(text)
    argv = ["train", "--data-dir", tiny_fashion, "--out", out, *TINY, "--epochs", "1"]
    assert_refused(argv, r"holds files nondeep did not write \(config.yaml, metrics.csv, summary.json\).*--force",
                   watch=[tmp_path])
    forced = nondeep(*argv, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert (out / "last.safetensors").is_file() and (out / ".nondeep.lock").is_file()


# --- --resume into a run it does not fit ---------------------------------------------------------------

@pytest.mark.parametrize("case", ["other model", "other model_kwargs", "other dataset", "other batch size"])
def test_resume_into_a_run_of_another_model_or_dataset_is_refused(case, tiny_fashion, trained, tmp_path):
    three = _image_tree(tmp_path / "three", ["a", "b", "c"], 4)
    base = ["train", "--resume", "--out", trained, "--data-dir", tiny_fashion, "--no-progress", "--num-workers", "0"]
    argv, message = {
        "other model": ([*base, *TINY, "--model", "wrn_16_1", "--model-kwargs", "{}"],
                        rf"--resume: {re.escape(str(trained / 'last.safetensors'))} is a run of parnet_tiny on "
                        r"fashion-mnist whose model is 'parnet_tiny', not 'wrn_16_1'"),  # names the checkpoint
        "other model_kwargs": ([*base, *TINY, "--model-kwargs", '{"width_multiplier": 1.0}'],
                               r"whose model_kwargs is .*'width_multiplier': 0.5"),
        "other dataset": ([*base, *TINY, "--data", three], r"whose data is 'fashion-mnist', not 'three'"),
        "other batch size": ([*base, *TINY, "--batch-size", "16"], r"whose batch_size is 32, not 16"),
    }[case]
    assert_refused(argv, message, watch=[trained, tiny_fashion])


# --- checkpoints: metadata that does not fit the tensors, the metadata checksum --------------------------

def _save(path, net, **meta):
    save_checkpoint(path, net, {"model": "parnet_tiny", "model_kwargs": {"num_classes": 10, "in_chans": 1,
                                  "width_multiplier": 0.5}, "data": {"name": "fashion-mnist", "in_chans": 1,
                                  "num_classes": 10, "image_size": [28, 28]}, "step": 1, **meta})


@pytest.mark.parametrize("case, meta, message", [
    ("model", {"model": "wrn_16_1"}, r"metadata \(model 'wrn_16_1' .*does not fit its weights"),
    ("class count", {"model_kwargs": {"num_classes": 3, "in_chans": 1, "width_multiplier": 0.5}},
     r"'num_classes': 3.*does not fit its weights"),
    ("channel count", {"model_kwargs": {"num_classes": 10, "in_chans": 3, "width_multiplier": 0.5}},
     r"'in_chans': 3.*does not fit its weights"),
    ("model_kwargs", {"model_kwargs": {"num_classes": 10, "in_chans": 1, "width_multiplier": 1.0}},
     r"'width_multiplier': 1.0.*does not fit its weights"),
    ("data channels", {"data": {"name": "fashion-mnist", "in_chans": 3, "num_classes": 10, "image_size": [28, 28]}},
     r"records data with in_chans 3 but its weights are a model with in_chans 1"),
], ids=["model", "class count", "channel count", "model_kwargs", "data channels"])
def test_checkpoint_metadata_that_does_not_fit_its_tensors_is_refused(tmp_path, tiny_fashion, case, meta, message):
    path = tmp_path / "odd.safetensors"
    _save(path, create_model("parnet_tiny", num_classes=10, in_chans=1, width_multiplier=0.5), **meta)
    assert_refused(["eval", path, "--data-dir", tiny_fashion], message, watch=[tmp_path])
    if case == "model":  # export reads checkpoints through the same check
        assert_refused(["export", path, "--out", tmp_path / "odd.onnx"], message, watch=[tmp_path],
                       absent=[tmp_path / "odd.onnx"])


def _rewrite_header(src, dst, old: bytes, new: bytes):
    data = src.read_bytes()
    assert len(old) == len(new) and old in data
    dst.write_bytes(data.replace(old, new, 1))


def test_altered_metadata_fails_the_checksum(trained, tmp_path):
    # the same length, so the file stays a valid safetensors file: only the checksum can tell
    altered = tmp_path / "altered.safetensors"
    # the metadata is a JSON string inside the JSON header, so its quotes are escaped
    _rewrite_header(trained / "last.safetensors", altered, b'\\"model\\": \\"parnet_tiny\\"',
                    b'\\"model\\": \\"parnet_tinz\\"')
    assert_refused(["eval", altered], r"fails its checksum \(altered or partly written\)", watch=[tmp_path, trained])
    with pytest.raises(CheckpointError, match="fails its checksum"):
        read_checkpoint(altered)


def test_a_v1_checkpoint_without_the_metadata_checksum_still_loads(trained, tmp_path):
    """Chosen compatibility: format v1 files (tensor checksum only) load, checked by their tensor checksum."""
    from safetensors.torch import save

    tensors, metadata = read_safetensors(trained / "last.safetensors")
    meta = json.loads(metadata["nondeep"])
    meta["format"] = "nondeep-checkpoint-v1"
    old = tmp_path / "v1.safetensors"
    old.write_bytes(save(tensors, metadata={"nondeep": json.dumps(meta)}))
    assert read_checkpoint(old)[1]["format"] == "nondeep-checkpoint-v1"
    tensors["model.fc.bias"] = tensors["model.fc.bias"] + 1  # its tensor checksum still guards it
    old.write_bytes(save(tensors, metadata={"nondeep": json.dumps(meta)}))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        read_checkpoint(old)


# --- eval ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_on_cuda_without_a_gpu_is_refused(trained, tmp_path):
    assert_refused(["eval", trained / "last.safetensors", "--device", "cuda"], r"CUDA is not available: use "
                   r"--device cpu", watch=[trained])


def test_eval_batch_size_zero_is_refused(trained):
    assert_refused(["eval", trained / "last.safetensors", "--batch-size", "0"], r"--batch-size must be >= 1",
                   watch=[trained])


def test_eval_reads_an_image_folder_at_the_checkpoints_channels_and_size(trained, tmp_path):
    # a grey 28x28 checkpoint on a tree of 40x40 colour images: read as grey 28x28, so it evaluates
    colour = _image_tree(tmp_path / "colour", [str(c) for c in range(10)], 2, size=(40, 40), mode="RGB")
    result = nondeep("eval", trained / "last.safetensors", "--data", colour, "--batch-size", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| colour " in result.stdout


# --- one run a folder ----------------------------------------------------------------------------------

def _wait_for(predicate, proc, seconds=240):
    deadline = time.monotonic() + seconds
    while not predicate() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert predicate(), "the first run ended or never got there"


def test_a_second_run_into_a_busy_folder_is_refused_and_a_dead_runs_lock_is_taken_over(tiny_fashion, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "nondeep.cli", "train", "--data-dir", str(tiny_fashion), "--out",
                              str(out), *TINY, "--epochs", "50", "--checkpoint-every-steps", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        _wait_for(lambda: (out / "last.safetensors").exists(), first)
        # the second run is refused while the first writes, naming the first's PID; nothing of it is touched
        # (the first keeps writing, so only the files a refusal could write are compared: config.yaml)
        config = (out / "config.yaml").read_bytes()
        second = nondeep("train", "--data-dir", tiny_fashion, "--out", out, *TINY, "--epochs", "1", "--resume")
        err = second.stderr.strip()
        assert second.returncode == 2 and "\n" not in err, err[-2000:]
        assert f"is being written by another nondeep run (PID {first.pid}" in err, err
        assert (out / "config.yaml").read_bytes() == config
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    # the first is dead (SIGKILL: no cleanup); its lock file is left behind and a resumed run takes it over
    lock = out / ".nondeep.lock"
    assert json.loads(lock.read_text())["pid"] == first.pid
    step = read_checkpoint(out / "last.safetensors")[1]["step"]
    resumed = subprocess.Popen([sys.executable, "-m", "nondeep.cli", "train", "--data-dir", str(tiny_fashion),
                                "--out", str(out), *TINY, "--epochs", "50", "--checkpoint-every-steps", "1",
                                "--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for(lambda: _step(out / "last.safetensors") > step, resumed)  # it holds the lock and writes
        assert json.loads(lock.read_text())["pid"] == resumed.pid
    finally:
        resumed.kill()
        resumed.wait()


def _step(path):
    try:
        return read_checkpoint(path)[1]["step"]
    except (CheckpointError, OSError):
        return -1


# --- Ctrl-C ----------------------------------------------------------------------------------------------

def test_ctrl_c_saves_says_how_to_continue_and_skips_the_final_evaluation(tiny_fashion, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nondeep.cli", "train", "--data-dir", str(tiny_fashion), "--out",
                             str(out), *TINY, "--epochs", "50", "--checkpoint-every-steps", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(lambda: _step(out / "last.safetensors") >= 3, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-2000:]
    last = out / "last.safetensors"
    assert re.search(rf"interrupted \(SIGINT\) after \d+ of 50 epochs: checkpoint saved at {re.escape(str(last))}; "
                     r"continue with --resume", stderr), stderr[-2000:]
    assert "test_accuracy" not in stdout  # no result table for an unfinished run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["stopped_by"] == "SIGINT"
    assert summary["test_accuracy"] is None and summary["fused_test_accuracy"] is None  # not evaluated
    assert summary["epochs"] < 50 and _step(last) >= 3


def test_a_second_ctrl_c_exits_at_once_and_the_last_checkpoint_stays_whole(tiny_fashion, tmp_path):
    out = tmp_path / "run"
    # big steps (batch 256, about 0.5 s each on one thread), so the second Ctrl-C lands inside the step that
    # the first one asked to finish
    proc = subprocess.Popen([sys.executable, "-m", "nondeep.cli", "train", "--data-dir", str(tiny_fashion), "--out",
                             str(out), *TINY, "--epochs", "50", "--checkpoint-every-steps", "1", "--batch-size", "256",
                             "--max-train-samples", "512", "--model-kwargs", "{}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(lambda: _step(out / "last.safetensors") >= 1, proc)
    proc.send_signal(signal.SIGINT)
    lines = []
    while not any("saving a checkpoint after this step" in line for line in lines):  # the first was handled
        lines.append(proc.stderr.readline())
        assert lines[-1], "".join(lines)
    proc.send_signal(signal.SIGINT)
    stderr = "".join(lines) + proc.communicate(timeout=240)[1]
    assert proc.returncode == 130, stderr[-2000:]
    last = out / "last.safetensors"
    assert stderr.strip().splitlines()[-1] == (f"nondeep: interrupted at once; the last checkpoint ({last}) is "
                                               f"intact: continue with --resume"), stderr[-2000:]
    assert not (out / "summary.json").exists()
    assert _step(last) >= 1  # whole: it loads and passes its checksum
    assert not list(out.glob(".*.tmp"))


# --- ImageFolder trees at their own size ------------------------------------------------------------------

def test_an_image_folder_is_read_at_its_own_size_and_colour_unless_told(tmp_path):
    from nondeep.data import build_loaders
    from nondeep.data.folder import GREY_MEAN

    grey = _image_tree(tmp_path / "grey", ["a", "b"], 3, size=(20, 20))
    colour = _image_tree(tmp_path / "colour", ["a", "b"], 3, size=(30, 20), mode="RGB")
    cases = [(grey, {}, (1, 20)), (colour, {}, (3, 20)),  # a tree's side is its images' shorter side
             (grey, {"image_size": 32, "in_chans": 3}, (3, 32)), (colour, {"in_chans": 1}, (1, 20))]
    for root, options, (chans, side) in cases:
        train, evaluate, info = build_loaders(str(root), batch_size=4, num_workers=0, **options)
        assert (info.in_chans, info.image_size, info.path) == (chans, (side, side), str(root.resolve()))
        assert len(info.mean) == chans and (chans == 3 or info.mean == GREY_MEAN)
        for loader in (train, evaluate):
            assert next(iter(loader))[0].shape[1:] == (chans, side, side)


def test_a_batch_that_would_not_fit_in_memory_is_lowered_with_the_lr(monkeypatch):
    from nondeep.train import TrainConfig
    from nondeep.train import preflight

    monkeypatch.setattr(preflight, "device_memory", lambda device: 16 * 2**30)  # a 16 GiB machine
    cfg = TrainConfig(model="parnet_tiny", batch_size=256, lr=0.2)
    total, _ = preflight.activation_bytes(create_model("parnet_tiny", num_classes=10), (3, 224, 224))
    batch, eval_batch = preflight.fit_batches(cfg, torch.device("cpu"), 10, 3, (224, 224))
    per_image, budget = preflight._TRAIN_FACTOR * total, preflight.MEMORY_SHARE * 16 * 2**30
    assert batch % 8 == 0 and batch * per_image <= budget < (batch + 8) * per_image  # the largest multiple of 8
    fitted = preflight.fitted_config(cfg, batch, eval_batch)
    assert (fitted.batch_size, fitted.lr) == (batch, pytest.approx(0.2 * batch / 256))
    monkeypatch.setattr(preflight, "device_memory", lambda device: 2**29)  # too small for two images: refused
    with pytest.raises(NondeepError, match="needs about .* GiB an image to train.*smaller --image-size"):
        preflight.fit_batches(cfg, torch.device("cpu"), 10, 3, (224, 224))


PEAK_RSS = ("import resource, subprocess, sys\n"
            "code = subprocess.run(sys.argv[1:]).returncode\n"
            "print('peak_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(code)\n")


def test_a_folder_of_small_pngs_trains_evaluates_and_exports_at_its_own_size_in_little_memory(tmp_path):
    root = tmp_path / "pngs"
    _image_tree(root / "train", ["a", "b"], 160)  # 320 images: one whole batch at the default 256
    _image_tree(root / "val", ["a", "b"], 10, seed=1)
    # default flags (batch 256, 2 loader workers), one epoch, the data given relative to the working directory
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "nondeep.cli", "train", "--data",
                             "pngs", "--out", "run", "--epochs", "1", "--no-progress"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    peak_gib = int(result.stdout.split("peak_kib")[-1]) / 2**20  # ru_maxrss is in KiB on Linux
    assert peak_gib < 4, f"training peaked at {peak_gib:.2f} GiB"  # 224x224 RGB took 23 GB and was killed
    checkpoint = tmp_path / "run" / "last.safetensors"
    data = read_checkpoint(checkpoint)[1]["data"]
    assert (data["in_chans"], data["image_size"], data["path"]) == (1, [28, 28], str(root.resolve()))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    fused = create_model("parnet_tiny", num_classes=2, in_chans=1)
    from nondeep.measure import count_flops
    from nondeep.reparam import reparameterize_model
    assert summary["flops"] == count_flops(reparameterize_model(fused.eval()), (1, 28, 28))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = nondeep("eval", checkpoint, "--batch-size", "16", cwd=elsewhere)  # finds the data by its path
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert re.search(r"\| pngs +\| False", evaluated.stdout), evaluated.stdout
    exported = nondeep("export", checkpoint, "--out", tmp_path / "m.onnx", "--repeats", "2", cwd=elsewhere)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "input 1x28x28" in exported.stdout, exported.stdout
