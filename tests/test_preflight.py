"""The trainer's checks before it writes anything (nondeep.train.preflight), as units: the output path, the
model's arguments against the data, the activation estimate and the batch fitted to memory (exact numbers),
and a resumed checkpoint that must belong to the run. The CLI's view of the same refusals is
tests/test_refusals.py."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from nondeep.checkpoint import CheckpointError
from nondeep.data import DataInfo
from nondeep.errors import NondeepError
from nondeep.train import config_from_dict
from nondeep.train import preflight
from nondeep.train.preflight import (activation_bytes, build_model, check_out_path, check_resume_fits,
                                     eval_batch_for, fit_batches, fitted_config, model_kwargs_for)

CPU = torch.device("cpu")


def test_the_constants():
    assert (preflight.MEMORY_SHARE, preflight._TRAIN_FACTOR, preflight._EVAL_FACTOR, preflight.EVAL_BATCH) == (
        0.5, 2.5, 12, 256)


# ---------------------------------------------------------------- the output path

def test_a_new_or_existing_folder_is_a_run_folder(tmp_path):
    check_out_path(tmp_path)
    check_out_path(tmp_path / "new" / "deeper")


def test_a_file_is_not_a_run_folder(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(NondeepError) as err:
        check_out_path(tmp_path / "f")
    assert str(err.value) == f"--out {tmp_path / 'f'} is a file, not a folder: choose a folder for the run"
    with pytest.raises(NondeepError) as err:
        check_out_path(tmp_path / "f" / "run")
    assert str(err.value) == (f"cannot make the run folder {tmp_path / 'f' / 'run'}: {tmp_path / 'f'} is a file; "
                              "choose another --out")


def test_the_writable_check_asks_for_write_and_search(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: asked.append((path, mode)) or False)
    with pytest.raises(NondeepError) as err:
        check_out_path(tmp_path / "run")
    assert asked == [(tmp_path, os.W_OK | os.X_OK)]
    assert str(err.value) == (f"cannot write the run folder {tmp_path / 'run'}: {tmp_path} is not writable; "
                              "choose another --out")


# ---------------------------------------------------------------- the model's arguments

def test_model_kwargs_take_the_datas_classes_and_channels():
    cfg = config_from_dict({"model_kwargs": {"num_streams": 2}})
    assert model_kwargs_for(cfg, 10, 1) == {"num_classes": 10, "in_chans": 1, "num_streams": 2}
    agreeing = config_from_dict({"model_kwargs": {"num_classes": 10, "in_chans": 1}})
    assert model_kwargs_for(agreeing, 10, 1) == {"num_classes": 10, "in_chans": 1}


def test_model_kwargs_that_contradict_the_data_are_refused():
    with pytest.raises(NondeepError) as err:
        model_kwargs_for(config_from_dict({"model_kwargs": {"num_classes": 5}}), 10, 1)
    assert str(err.value) == ("--model-kwargs num_classes=5 does not fit fashion-mnist, which has 10 classes: drop "
                              "num_classes from --model-kwargs, it is taken from the data")
    with pytest.raises(NondeepError) as err:
        model_kwargs_for(config_from_dict({"model_kwargs": {"in_chans": 3}}), 10, 1)
    assert str(err.value) == ("--model-kwargs in_chans=3 does not fit fashion-mnist, which has 1 image channels: "
                              "drop in_chans from --model-kwargs, it is taken from the data (for an image folder, "
                              "--in-chans converts the images)")


def test_an_argument_the_model_does_not_take_is_one_line():
    assert isinstance(build_model("mimic_snn_1k", {"num_classes": 3}), nn.Module)
    with pytest.raises(NondeepError) as err:
        build_model("mimic_snn_1k", {"colour": 1})
    message = str(err.value)
    assert message.startswith("--model-kwargs do not fit mimic_snn_1k (") and "colour" in message
    assert message.endswith("): fix or drop that argument (`nondeep models` lists the models)")
    assert "\n" not in message


# ---------------------------------------------------------------- activations and batches

class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)  # 4 x 8 x 8 floats = 1024 bytes
        self.pool = nn.AdaptiveAvgPool2d(2)        # 4 x 2 x 2 floats = 64 bytes
        self.bn = nn.BatchNorm2d(4)                # 64 bytes, and its running statistics must not move

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pool(self.conv(x)))


def test_activation_bytes_sums_the_leaf_outputs_and_leaves_the_model_as_it_was():
    model = TwoLayers().train()
    before = model.bn.running_mean.clone()
    assert activation_bytes(model, (1, 8, 8)) == (1024 + 64 + 64, 1024)
    assert model.training and torch.equal(model.bn.running_mean, before)
    assert not model.conv._forward_hooks  # the hooks are removed
    model.eval()
    activation_bytes(model, (1, 8, 8))
    assert not model.training


def test_a_batch_is_lowered_to_a_multiple_of_8_that_fits():
    assert preflight._fit(256, 10.0, 10_000) == 256      # 1000 fit
    assert preflight._fit(256, 10.0, 2_560) == 256       # exactly 256 fit
    assert preflight._fit(256, 10.0, 2_559) == 248       # 255 fit: the multiple of 8 below
    assert preflight._fit(256, 10.0, 75) == 7            # fewer than 8 fit: all of them
    assert preflight._fit(256, 10.0, 5) == 1             # none fits: 1, the caller refuses
    assert preflight._fit(4, 0.0, 4.0) == 4              # no bytes count as one: 4 fit, not infinitely many


def test_fitted_config_scales_the_lr_with_a_lowered_batch():
    cfg = config_from_dict({"batch_size": 256, "lr": 0.2})
    same = fitted_config(cfg, 256, 1024)
    assert (same.batch_size, same.eval_batch_size, same.lr) == (256, 1024, 0.2)
    lowered = fitted_config(cfg, 64, 100)
    assert (lowered.batch_size, lowered.eval_batch_size, lowered.lr) == (64, 100, pytest.approx(0.05))
    assert cfg.batch_size == 256  # the original is not modified


def _memory(monkeypatch, total: int) -> None:
    monkeypatch.setattr(preflight, "device_memory", lambda device: total)


def test_fit_batches_lowers_train_and_eval_batches_to_the_memory_and_says_so(monkeypatch, capsys):
    cfg = config_from_dict({"model": "mimic_snn_1k", "batch_size": 256, "eval_batch_size": 1024, "lr": 0.2})
    total, largest = activation_bytes(build_model("mimic_snn_1k", {"num_classes": 10, "in_chans": 1}), (1, 28, 28))
    _memory(monkeypatch, 10**12)
    assert fit_batches(cfg, CPU, 10, 1, (28, 28)) == (256, 1024)
    assert capsys.readouterr().err == ""
    memory = int(2 * 2.5 * total * 100)  # half of it holds 100 training images
    _memory(monkeypatch, memory)
    train_batch, eval_batch = fit_batches(cfg, CPU, 10, 1, (28, 28))
    assert train_batch == 96 and eval_batch == min(1024, int(memory / 2 // (12 * largest)) // 8 * 8)
    err = capsys.readouterr().err
    assert err.startswith("nondeep: batch 256 of 1x28x28 images would need about ")
    assert "for mimic_snn_1k; training with batch 96 and lr 0.075 (scaled with the batch) to fit in " in err


def test_a_model_too_big_for_two_images_is_refused(monkeypatch):
    cfg = config_from_dict({"model": "mimic_snn_1k"})
    total, _ = activation_bytes(build_model("mimic_snn_1k", {"num_classes": 10, "in_chans": 1}), (1, 28, 28))
    _memory(monkeypatch, int(2 * 2.5 * total * 1.5))  # one and a half images
    with pytest.raises(NondeepError) as err:
        fit_batches(cfg, CPU, 10, 1, (28, 28))
    assert str(err.value).startswith("mimic_snn_1k on 1x28x28 images needs about ")
    assert str(err.value).endswith(": use a smaller --image-size or a smaller model")
    single = config_from_dict({"model": "mimic_snn_1k", "batch_size": 1})  # a batch of one asked for: allowed
    assert fit_batches(single, CPU, 10, 1, (28, 28))[0] == 1


def test_the_probe_does_not_move_the_runs_random_stream(monkeypatch):
    _memory(monkeypatch, 10**12)
    torch.manual_seed(3)
    fit_batches(config_from_dict({"model": "mimic_snn_1k"}), CPU, 10, 1, (28, 28))
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))


def test_eval_batch_for_and_device_memory():
    assert eval_batch_for(100, 1, CPU) == 100
    assert preflight.device_memory(CPU) == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ---------------------------------------------------------------- resuming

INFO = DataInfo(name="fashion-mnist", num_classes=10, classes=[str(i) for i in range(10)], in_chans=1,
                image_size=(28, 28), mean=(0.5,), std=(0.5,), num_train=100, num_eval=10)


def _meta(**changes):
    meta = {"model": "parnet_tiny", "model_kwargs": {"num_classes": 10, "in_chans": 1},
            "data": {"name": "fashion-mnist", "classes": [str(i) for i in range(10)], "in_chans": 1,
                     "image_size": [28, 28]},
            "config": {"batch_size": 256}}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            meta[section][field] = value
        else:
            meta[section] = value
    return meta


def test_a_checkpoint_of_this_run_resumes():
    cfg = config_from_dict({"model": "parnet_tiny", "batch_size": 256})
    check_resume_fits("run/last.safetensors", _meta(), cfg, {"num_classes": 10, "in_chans": 1}, INFO)
    check_resume_fits("run/last.safetensors", {}, cfg, {}, INFO)  # nothing recorded: nothing to contradict


@pytest.mark.parametrize("change,key,had,asked", [
    ({"data__name": "cifar10"}, "data", "cifar10", "fashion-mnist"),
    ({"data__classes": ["a", "b"]}, "classes", ["a", "b"], [str(i) for i in range(10)]),
    ({"data__in_chans": 3}, "in_chans", 3, 1),
    ({"data__image_size": [32, 32]}, "image_size", [32, 32], [28, 28]),
    ({"model": "wrn_16_4"}, "model", "wrn_16_4", "parnet_tiny"),
    ({"model_kwargs": {"num_classes": 10, "in_chans": 1, "num_streams": 1}}, "model_kwargs",
     {"num_classes": 10, "in_chans": 1, "num_streams": 1}, {"num_classes": 10, "in_chans": 1}),
    ({"config__batch_size": 128}, "batch_size", 128, 256),
])
def test_a_checkpoint_of_another_run_names_what_differs(change, key, had, asked):
    cfg = config_from_dict({"model": "parnet_tiny", "batch_size": 256})
    meta = _meta(**change)
    with pytest.raises(CheckpointError) as err:
        check_resume_fits("run/last.safetensors", meta, cfg, {"num_classes": 10, "in_chans": 1}, INFO)
    assert str(err.value) == (f"--resume: run/last.safetensors is a run of {meta['model']} on {meta['data']['name']} "
                              f"whose {key} is {had!r}, not {asked!r}: resume it with the options it was started "
                              "with, or choose another --out")


def test_the_probe_is_built_for_the_datas_classes_and_channels(monkeypatch):
    probes = []
    real = preflight.activation_bytes
    monkeypatch.setattr(preflight, "activation_bytes", lambda model, size: probes.append(model) or real(model, size))
    fit_batches(config_from_dict({"model": "mimic_snn_1k"}), CPU, 3, 3, (28, 28))
    assert (probes[0].num_classes, probes[0].in_chans) == (3, 3)


def test_on_this_machines_memory_a_small_model_keeps_its_batches():
    """The real device_memory of the CPU (no patch): a small flat net's batches fit in any machine that runs the suite."""
    cfg = config_from_dict({"model": "mimic_snn_1k", "batch_size": 256, "eval_batch_size": 1024})
    assert fit_batches(cfg, CPU, 10, 1, (28, 28)) == (256, 1024)


def test_two_images_are_enough_to_train(monkeypatch, capsys):
    cfg = config_from_dict({"model": "mimic_snn_1k", "batch_size": 8, "lr": 0.1})
    total, _ = activation_bytes(build_model("mimic_snn_1k", {"num_classes": 10, "in_chans": 1}), (1, 28, 28))
    _memory(monkeypatch, int(2 * 2.5 * total * 2) + 1)  # exactly two images
    assert fit_batches(cfg, CPU, 10, 1, (28, 28))[0] == 2
    assert "training with batch 2 and lr 0.025 " in capsys.readouterr().err


def test_the_messages_give_the_memory_in_gib(monkeypatch, capsys):
    gib = 2 ** 30
    monkeypatch.setattr(preflight, "activation_bytes", lambda model, size: (int(0.4 * gib), 1))  # 0.4 GiB an image
    _memory(monkeypatch, 8 * gib)  # half: 4 GiB, 4 images at 2.5 x 0.4 GiB
    cfg = config_from_dict({"model": "mimic_snn_1k", "batch_size": 16, "lr": 0.2})
    assert fit_batches(cfg, CPU, 10, 1, (28, 30))[0] == 4
    assert capsys.readouterr().err == ("nondeep: batch 16 of 1x28x30 images would need about 16.0 GiB for "
                                       "mimic_snn_1k; training with batch 4 and lr 0.05 (scaled with the batch) to "
                                       "fit in 4.0 GiB\n")
    _memory(monkeypatch, int(3 * gib))  # half: 1.5 GiB, one image
    with pytest.raises(NondeepError) as err:
        fit_batches(cfg, CPU, 10, 1, (28, 30))
    assert str(err.value) == ("mimic_snn_1k on 1x28x30 images needs about 1.0 GiB an image to train, more than half "
                              "of this device's 3.0 GiB allows for two: use a smaller --image-size or a smaller "
                              "model")


def test_a_batch_that_fits_exactly_is_kept_whole():
    assert preflight._fit(10, 1.0, 10.0) == 10   # not lowered to the multiple of 8 below
    assert preflight._fit(10, 1.0, 9.0) == 8


def test_an_unchanged_batch_keeps_the_lr_to_the_bit():
    assert fitted_config(config_from_dict({"batch_size": 3, "lr": 0.1}), 3, 3).lr == 0.1  # 0.1 * 3 / 3 != 0.1
