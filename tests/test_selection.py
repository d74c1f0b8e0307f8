"""The test split is touched once: validation is held out of train (fixed, disjoint), best.safetensors is chosen
on it, and the test split is read only after training, for the final, fused and chosen models."""

import pytest
import torch

from nondeep.checkpoint import load_model, read_checkpoint
from nondeep.data import DatasetError, build_loaders, build_test_loader, load_arrays
from nondeep.train import TrainConfig, train
from nondeep.train import loop


def _rows(loader):
    """Each image of a loader as bytes (un-augmented), to compare splits by content."""
    return {bytes(img.flatten().numpy()) for img in loader.images}


def test_validation_is_held_out_of_train_fixed_and_disjoint_from_test(tiny_fashion):
    train_a, val_a, info = build_loaders("fashion-mnist", data_dir=str(tiny_fashion), val_split=0.25, seed=0)
    train_b, val_b, _ = build_loaders("fashion-mnist", data_dir=str(tiny_fashion), val_split=0.25, seed=7)
    images, _, _ = load_arrays("fashion-mnist", "train", str(tiny_fashion))
    assert len(val_a.images) == 128 and len(train_a.images) == 384 == info.num_train  # 25% of 512
    assert torch.equal(val_a.images, val_b.images)  # the same images for every seed: runs compare
    train_rows, val_rows = _rows(train_a), _rows(val_a)
    assert not train_rows & val_rows and len(train_rows | val_rows) == len({bytes(i.flatten().numpy()) for i in images})
    test = build_test_loader("fashion-mnist", data_dir=str(tiny_fashion))
    test_images, _, _ = load_arrays("fashion-mnist", "test", str(tiny_fashion))
    assert torch.equal(test.images, test_images)
    _, eval_without_val, _ = build_loaders("fashion-mnist", data_dir=str(tiny_fashion), val_split=0.0)
    assert torch.equal(eval_without_val.images, test_images)  # val_split 0: eval is the test split


@pytest.mark.parametrize("val_split, batch_size, message", [
    (0.0001, 32, "holds out no image"), (0.95, 32, "fewer than one batch")])
def test_a_validation_split_that_leaves_nothing_is_refused(tiny_fashion, val_split, batch_size, message):
    with pytest.raises(DatasetError, match=message):
        build_loaders("fashion-mnist", data_dir=str(tiny_fashion), val_split=val_split, batch_size=batch_size)


def _cfg(tiny_fashion, out, **kw):
    base = dict(model="mimic_snn_1k", data="fashion-mnist", data_dir=str(tiny_fashion), out=str(out), epochs=3,
                batch_size=64, lr=0.05, progress=False, num_workers=0, flip=False, crop_padding=0, val_split=0.25)
    return TrainConfig(**{**base, **kw})


def test_best_is_chosen_on_validation_and_test_is_read_only_at_the_end(tiny_fashion, tmp_path, monkeypatch):
    """Scripted validation accuracies 40, 70, 55: best is epoch 2; the test loader is never evaluated during
    training, and at the end exactly three times (final, fused, best)."""
    real_evaluate = loop.evaluate
    calls = []
    scripted = iter([40.0, 70.0, 55.0])

    def spy(model, loader, device, *args, **kwargs):
        metrics = real_evaluate(model, loader, device, *args, **kwargs)
        calls.append(loader)
        if len(calls) <= 3:  # the three epochs' validation
            metrics["eval_top1"] = next(scripted)
        return metrics

    monkeypatch.setattr(loop, "evaluate", spy)
    summary = train(_cfg(tiny_fashion, tmp_path / "run"))
    val_loader, test_loader = calls[0], calls[-1]
    assert calls[:3] == [val_loader] * 3 and calls[3:] == [test_loader] * 3 and val_loader is not test_loader
    assert len(test_loader.images) == 256 and len(val_loader.images) == 128
    assert summary["best_epoch"] == 2 and summary["best_val_accuracy"] == 70.0 and summary["val_accuracy"] == 55.0
    assert summary["selection"]["split"] == "val" and summary["eval_split"] == "val"
    _, best_meta = read_checkpoint(tmp_path / "run" / "best.safetensors")
    assert best_meta["epoch"] == 2 and best_meta["best_top1"] == 70.0
    best_model, _ = load_model(tmp_path / "run" / "best.safetensors")  # the epoch-2 weights, scored on test
    assert summary["best_test_accuracy"] == real_evaluate(best_model, test_loader, torch.device("cpu"))["eval_top1"]


def test_without_validation_nothing_is_selected_and_best_is_last(tiny_fashion, tmp_path):
    summary = train(_cfg(tiny_fashion, tmp_path / "run", val_split=0.0, epochs=2))
    assert summary["selection"] == {"split": None, "note": "val_split 0: trained on every training image, nothing "
                                                           "selected (best.safetensors = last)"}
    assert summary["eval_split"] == "test" and summary["best_epoch"] == 2 and summary["val_accuracy"] is None
    assert summary["best_test_accuracy"] == summary["test_accuracy"] and summary["train_images"] == 512
    best, _ = read_checkpoint(tmp_path / "run" / "best.safetensors")
    last, _ = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert all(torch.equal(best[k], last[k]) for k in last if k.startswith("model."))
