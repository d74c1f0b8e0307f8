"""Evaluation (nondeep.train.evaluate): loss, top-1 and top-5 computed exactly on crafted logits, and where a
checkpoint's evaluation finds its data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nondeep import create_model
from nondeep.checkpoint import CheckpointError, save_checkpoint
from nondeep.errors import DatasetError
from nondeep.data import build_loaders
from nondeep.train.evaluate import _recorded_data, evaluate, evaluate_checkpoint


class FixedLogits(nn.Module):
    """Returns the logits stored for each input index (x holds the index in every pixel); records its mode
    and the memory format it was given."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.scale = nn.Parameter(torch.ones(()))
        self.seen_channels_last: list[bool] = []
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        self.seen_channels_last.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return self.logits[x[:, 0, 0, 0].long()].to(torch.float16) * self.scale  # half logits: scored in float


def batches(labels: list[int], size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    index = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 3, 3)
    y = torch.tensor(labels)
    return [(index[i:i + size], y[i:i + size]) for i in range(0, len(labels), size)]


def test_loss_top1_and_top5_over_uneven_batches():
    # 7 classes; the true class ranks 1st, 2nd, 5th, 6th and 7th for the five samples
    logits = torch.tensor([[7, 6, 5, 4, 3, 2, 1]], dtype=torch.float32).repeat(5, 1)
    labels = [0, 1, 4, 5, 6]
    model = FixedLogits(logits).train()
    result = evaluate(model, batches(labels, 2), torch.device("cpu"))
    expected_loss = F.cross_entropy(logits.half().float(), torch.tensor(labels)).item()
    assert result["eval_top1"] == pytest.approx(100 * 1 / 5)
    assert result["eval_top5"] == pytest.approx(100 * 3 / 5)
    assert result["eval_loss"] == pytest.approx(expected_loss, rel=1e-6)  # the mean over samples, not batches
    assert not model.training  # evaluated in eval mode
    assert set(result) == {"eval_loss", "eval_top1", "eval_top5"}


def test_top5_with_fewer_than_five_classes_is_every_sample():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).repeat(3, 1)
    result = evaluate(FixedLogits(logits), batches([0, 1, 2], 3), torch.device("cpu"))
    assert result["eval_top5"] == 100.0 and result["eval_top1"] == pytest.approx(100 / 3)
    assert math.isfinite(result["eval_loss"])


def test_channels_last_is_what_the_model_gets_when_asked():
    model = FixedLogits(torch.zeros(2, 3))
    evaluate(model, batches([0, 1], 2), torch.device("cpu"))
    evaluate(model, batches([0, 1], 2), torch.device("cpu"), channels_last=True)
    assert model.seen_channels_last == [False, True]


def test_tta_flip_scores_the_mean_of_the_logits_of_an_image_and_its_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))  # not mirror-symmetric
    x, y = torch.randn(10, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    loader = [(x[:6], y[:6]), (x[6:], y[6:])]
    with torch.no_grad():
        plain, mirrored = model(x), model(x.flip(-1))
    assert not torch.allclose(plain, mirrored)  # else the test could not tell TTA from no TTA
    for tta, logits in ((False, plain), (True, (plain + mirrored) / 2)):
        result = evaluate(model, loader, torch.device("cpu"), tta_flip=tta)
        assert result["eval_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
        assert result["eval_top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())


def test_no_graph_is_recorded():
    model = FixedLogits(torch.zeros(3, 3))
    evaluate(model, batches([0, 1, 0], 2), torch.device("cpu"))
    assert model.grad_enabled == [False, False] and torch.is_grad_enabled()


def test_the_recorded_dataset_is_found_where_training_read_it(tmp_path):
    assert _recorded_data({"name": "fashion-mnist", "path": str(tmp_path)}, None) == ("fashion-mnist", str(tmp_path))
    assert _recorded_data({"name": "fashion-mnist", "path": str(tmp_path)}, "/mine") == ("fashion-mnist", "/mine")
    gone = str(tmp_path / "gone")
    assert _recorded_data({"name": "fashion-mnist", "path": gone}, None) == ("fashion-mnist", None)  # the search
    assert _recorded_data({"name": "cifar10"}, None) == ("cifar10", None)
    assert _recorded_data({"name": "flowers", "path": str(tmp_path)}, None) == (str(tmp_path), None)
    assert _recorded_data({"name": "flowers", "path": str(tmp_path)}, "d") == (str(tmp_path), "d")


def test_a_missing_dataset_says_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError) as err:
        _recorded_data({}, None)
    assert str(err.value) == "the checkpoint records no dataset: pass --data"
    gone = tmp_path / "gone"
    with pytest.raises(CheckpointError) as err:
        _recorded_data({"name": "flowers", "path": str(gone)}, None)
    assert str(err.value) == (f"the checkpoint was trained on the image folder 'flowers' at {gone}, which is not "
                              "there now: pass --data PATH of that folder")
    with pytest.raises(CheckpointError) as err:
        _recorded_data({"name": "flowers"}, None)
    assert str(err.value) == ("the checkpoint was trained on the image folder 'flowers', which is not there now: "
                              "pass --data PATH of that folder")


# ---------------------------------------------------------------- a checkpoint on its dataset

def _checkpoint(file, tiny_fashion, image_size=(28, 28), in_chans=1, num_classes=10, config=None, **data):
    model = create_model("mimic_snn_1k", input_size=image_size, in_chans=in_chans, num_classes=num_classes)
    recorded = {"name": "fashion-mnist", "path": str(tiny_fashion), "image_size": list(image_size),
                "in_chans": in_chans, "num_classes": num_classes, **data}
    kwargs = {"input_size": list(image_size), "in_chans": in_chans, "num_classes": num_classes}
    save_checkpoint(file, model, {"model": "mimic_snn_1k", "model_kwargs": kwargs, "data": recorded,
                                  **({"config": config} if config else {})})
    return model.eval()


def test_a_checkpoint_is_evaluated_on_the_test_split_it_recorded(tiny_fashion, tmp_path):
    model = _checkpoint(tmp_path / "c.safetensors", tiny_fashion)
    result = evaluate_checkpoint(tmp_path / "c.safetensors", batch_size=100)
    _, test_loader, _ = build_loaders("fashion-mnist", data_dir=str(tiny_fashion), eval_batch_size=100)
    assert result == {"checkpoint": str(tmp_path / "c.safetensors"), "model": "mimic_snn_1k",
                      "data": "fashion-mnist", "fused": False, "tta_flip": False,
                      **evaluate(model, test_loader, torch.device("cpu"))}
    assert evaluate_checkpoint(tmp_path / "c.safetensors", fused=True)["fused"] is True


def test_a_checkpoint_is_evaluated_with_the_tta_its_run_evaluated_with(tiny_fashion, tmp_path):
    model = _checkpoint(tmp_path / "c.safetensors", tiny_fashion, config={"tta_flip": True})
    _, test_loader, _ = build_loaders("fashion-mnist", data_dir=str(tiny_fashion), eval_batch_size=100)
    cpu = torch.device("cpu")
    with_tta, without = evaluate(model, test_loader, cpu, tta_flip=True), evaluate(model, test_loader, cpu)
    assert with_tta["eval_loss"] != without["eval_loss"]
    recorded = evaluate_checkpoint(tmp_path / "c.safetensors", batch_size=100)
    assert recorded["tta_flip"] is True and recorded["eval_loss"] == pytest.approx(with_tta["eval_loss"])
    asked = evaluate_checkpoint(tmp_path / "c.safetensors", batch_size=100, tta_flip=False)
    assert asked["tta_flip"] is False and asked["eval_loss"] == pytest.approx(without["eval_loss"])


def test_an_in_memory_set_is_resized_to_the_side_the_model_trained_at(tiny_fashion, tmp_path):
    model = _checkpoint(tmp_path / "c.safetensors", tiny_fashion, image_size=(32, 32))  # flat: exactly 32x32
    _, test_loader, _ = build_loaders("fashion-mnist", data_dir=str(tiny_fashion), eval_batch_size=100, image_size=32)
    expected = evaluate(model, test_loader, torch.device("cpu"))
    result = evaluate_checkpoint(tmp_path / "c.safetensors", batch_size=100)
    assert (result["eval_loss"], result["eval_top1"]) == pytest.approx((expected["eval_loss"], expected["eval_top1"]))


def test_a_dataset_the_checkpoint_does_not_fit_is_one_line(tiny_fashion, tmp_path):
    _checkpoint(tmp_path / "five.safetensors", tiny_fashion, num_classes=5, name="cifar10", path=None)
    with pytest.raises(CheckpointError) as err:
        evaluate_checkpoint(tmp_path / "five.safetensors", data="fashion-mnist", data_dir=str(tiny_fashion))
    assert str(err.value) == (f"checkpoint {tmp_path / 'five.safetensors'} was trained for 5 classes but "
                              "fashion-mnist has 10: evaluate it on the dataset it was trained on")
    _checkpoint(tmp_path / "rgb.safetensors", tiny_fashion, in_chans=3, name="cifar10", path=None)
    with pytest.raises(CheckpointError) as err:
        evaluate_checkpoint(tmp_path / "rgb.safetensors", data="fashion-mnist", data_dir=str(tiny_fashion))
    assert str(err.value) == (f"checkpoint {tmp_path / 'rgb.safetensors'} takes 3-channel images but fashion-mnist "
                              "has 1: evaluate it on the dataset it was trained on")


def test_a_data_dir_given_overrides_a_recorded_path_that_is_gone(tiny_fashion, tmp_path, no_fashion_mnist_anywhere,
                                                                monkeypatch):
    from nondeep.data import fashion_mnist

    def offline(url, timeout=60.0):
        raise OSError("offline")
    monkeypatch.setattr(fashion_mnist, "fetch_url", offline)
    _checkpoint(tmp_path / "c.safetensors", tiny_fashion, path=str(tmp_path / "moved-away"))
    with pytest.raises(DatasetError, match="Fashion-MNIST not found"):
        evaluate_checkpoint(tmp_path / "c.safetensors")  # the recorded folder is gone, nothing else has it
    assert evaluate_checkpoint(tmp_path / "c.safetensors", data_dir=str(tiny_fashion))["data"] == "fashion-mnist"


def test_use_ema_evaluates_the_averaged_weights(tiny_fashion, tmp_path):
    from torch.optim.swa_utils import AveragedModel

    model = create_model("mimic_snn_1k", in_chans=1)
    averaged = AveragedModel(create_model("mimic_snn_1k", in_chans=1))  # other weights than the model's
    save_checkpoint(tmp_path / "c.safetensors", model, {
        "model": "mimic_snn_1k", "model_kwargs": {"in_chans": 1, "num_classes": 10},
        "data": {"name": "fashion-mnist", "path": str(tiny_fashion), "image_size": [28, 28], "in_chans": 1,
                 "num_classes": 10}}, ema=averaged)
    _, test_loader, _ = build_loaders("fashion-mnist", data_dir=str(tiny_fashion), eval_batch_size=64)
    with_ema = evaluate_checkpoint(tmp_path / "c.safetensors", use_ema=True)
    expected = evaluate(averaged.module, test_loader, torch.device("cpu"))["eval_loss"]
    assert with_ema["eval_loss"] == pytest.approx(expected)
    assert evaluate_checkpoint(tmp_path / "c.safetensors")["eval_loss"] == pytest.approx(
        evaluate(model, test_loader, torch.device("cpu"))["eval_loss"])


def test_an_image_folder_is_read_at_the_checkpoints_side_and_channels(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("val", 2)):
        for c, name in enumerate(("ant", "bee")):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), (40 * c, 90, 200)).save(tmp_path / "tree" / split / name / f"{i}.png")
    model = create_model("mimic_snn_1k", input_size=(1, 12, 12), num_classes=2)  # flat: takes exactly 1x12x12
    save_checkpoint(tmp_path / "c.safetensors", model, {
        "model": "mimic_snn_1k", "model_kwargs": {"input_size": [1, 12, 12], "num_classes": 2},
        "data": {"name": "tree", "path": str(tmp_path / "tree"), "image_size": [12, 12], "in_chans": 1,
                 "num_classes": 2}})
    result = evaluate_checkpoint(tmp_path / "c.safetensors")  # colour 16x16 images, read grey at 12x12
    assert result["data"] == "tree" and 0 <= result["eval_top1"] <= 100
    named = evaluate_checkpoint(tmp_path / "c.safetensors", data="tree", data_dir=str(tmp_path))  # under data_dir
    assert named["data"] == "tree" and named["eval_top1"] == result["eval_top1"]


def test_the_evaluation_batch_is_fitted_to_the_images_the_model_was_trained_on(tiny_fashion, tmp_path, monkeypatch):
    import sys

    from nondeep.train import preflight

    evaluate_module = sys.modules["nondeep.train.evaluate"]  # the package exports the function of that name

    _checkpoint(tmp_path / "c.safetensors", tiny_fashion, image_size=(32, 32))
    asked, batches = [], []
    real_bytes, real_build = preflight.activation_bytes, evaluate_module.build_loaders
    monkeypatch.setattr(preflight, "activation_bytes", lambda m, image: asked.append(image) or real_bytes(m, image))
    monkeypatch.setattr(evaluate_module, "build_loaders",
                        lambda *a, **k: batches.append((k["batch_size"], k["eval_batch_size"])) or real_build(*a, **k))
    largest = real_bytes(create_model("mimic_snn_1k", input_size=(1, 32, 32)), (1, 32, 32))[1]
    monkeypatch.setattr(preflight, "device_memory", lambda device: int(2 * 12 * largest * 40))  # 40 images fit
    evaluate_checkpoint(tmp_path / "c.safetensors")
    evaluate_checkpoint(tmp_path / "c.safetensors", batch_size=7)
    assert asked == [(1, 32, 32)] and batches == [(40, 40), (7, 7)]


def test_a_checkpoint_that_records_no_image_is_probed_at_its_models_own_size(tiny_fashion, tmp_path, monkeypatch):
    from nondeep.train import preflight

    model = create_model("mimic_snn_1k", in_chans=1)  # flat: a probe at any other size than 1x28x28 fails
    save_checkpoint(tmp_path / "c.safetensors", model, {
        "model": "mimic_snn_1k", "model_kwargs": {"in_chans": 1}, "data": {"name": "fashion-mnist",
                                                                            "path": str(tiny_fashion)}})
    asked = []
    real = preflight.activation_bytes
    monkeypatch.setattr(preflight, "activation_bytes", lambda m, image: asked.append(image) or real(m, image))
    assert evaluate_checkpoint(tmp_path / "c.safetensors")["data"] == "fashion-mnist"
    assert asked == [(1, 28, 28)]


def _loaded_as(monkeypatch, change):
    """evaluate_checkpoint's load_model, with `change(model, meta)` applied to what it loads (it may return a
    model to use instead)."""
    import sys

    evaluate_module = sys.modules["nondeep.train.evaluate"]
    real = evaluate_module.load_model

    def load(*args, **kwargs):
        model, meta = real(*args, **kwargs)
        return change(model, meta) or model, meta
    monkeypatch.setattr(evaluate_module, "load_model", load)


def test_the_probe_takes_the_recorded_image_over_the_models_own_size(tiny_fashion, tmp_path, monkeypatch):
    from nondeep.train import preflight

    _checkpoint(tmp_path / "c.safetensors", tiny_fashion, image_size=(32, 32))
    _loaded_as(monkeypatch, lambda model, meta: model.pretrained_cfg.update(input_size=(3, 64, 64)))
    asked = []
    monkeypatch.setattr(preflight, "activation_bytes", lambda model, image: asked.append(image) or (0, 1000))
    evaluate_checkpoint(tmp_path / "c.safetensors")
    assert asked == [(1, 32, 32)]


def test_a_model_without_a_config_or_a_recorded_image_is_probed_at_imagenets_size(tiny_fashion, tmp_path,
                                                                                    monkeypatch):
    from nondeep.train import preflight

    def strip(model, meta):
        del model.pretrained_cfg
        meta["data"] = {"name": "fashion-mnist", "path": str(tiny_fashion)}
    _checkpoint(tmp_path / "c.safetensors", tiny_fashion)
    _loaded_as(monkeypatch, strip)
    asked = []
    monkeypatch.setattr(preflight, "activation_bytes", lambda model, image: asked.append(image) or (0, 1000))
    evaluate_checkpoint(tmp_path / "c.safetensors")
    assert asked == [(3, 224, 224)]


class _NoChannelCount(nn.Module):
    """A model that names no `in_chans` (as a torchvision: model)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.num_classes = inner, inner.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_a_model_that_names_no_channel_count_is_not_refused(tiny_fashion, tmp_path, monkeypatch):
    _checkpoint(tmp_path / "c.safetensors", tiny_fashion)
    _loaded_as(monkeypatch, lambda model, meta: _NoChannelCount(model))
    assert 0 <= evaluate_checkpoint(tmp_path / "c.safetensors")["eval_top1"] <= 100
