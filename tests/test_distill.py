"""Mimic learning / distillation on the tiny synthetic dataset: the logit cache (miss, hit, mismatch,
corruption), the losses against hand-computed values, ensembles, the transfer set, learning, CLI and lab."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from nondeep.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from nondeep.cli import main
from nondeep.data import Augment, build_loaders
from nondeep.distill import (CachedTargets, DistillError, DistillLoss, Ensemble, TeacherCacheError, distill,
                             kd_loss, make_transfer_set, mimic_loss)
from nondeep.distill.teacher import logits_over_images
from nondeep.models import create_model
from nondeep.train import TrainConfig, train


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    # These models are tiny: one thread is as fast, and immune to the 2-thread OpenMP slow-down (up to 75x
    # for the ParNet here) when the machine's 2 cores are shared with other jobs.
    torch.set_num_threads(1)


def _cfg(data_dir, out, **kw):
    # The synthetic classes are squares at fixed places: no flip (it would swap them), no crop by default.
    base = dict(model="mimic_snn_1k", data="fashion-mnist", data_dir=str(data_dir), out=str(out), epochs=2,
                batch_size=64, optimizer="adamw", lr=1e-3, schedule="cosine", label_smoothing=0.0, progress=False,
                num_workers=0, seed=0, flip=False, crop_padding=0, model_kwargs={"bottleneck": 32})
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def teacher(tiny_fashion, tmp_path_factory):
    """A quickly trained teacher checkpoint (a shallow net is enough to be a teacher here)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(_cfg(tiny_fashion, out, epochs=3, model_kwargs={}))
    return str(out / "last.safetensors")


@pytest.fixture(scope="module")
def random_teacher(teacher, tmp_path_factory):
    """A second, untrained teacher with the same data meta (for ensembles and key mismatches)."""
    _, meta = read_checkpoint(teacher)
    torch.manual_seed(123)
    model = create_model(meta["model"], **meta["model_kwargs"])
    path = tmp_path_factory.mktemp("teacher2") / "random.safetensors"
    save_checkpoint(path, model, {k: v for k, v in meta.items() if k not in ("sha256", "format")})
    return str(path)


class _CountCalls:
    """Counts the teacher ensemble's forward passes."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = Ensemble.forward

        def counting(module, x):
            self.calls += 1
            return real(module, x)

        monkeypatch.setattr(Ensemble, "forward", counting)


# --- losses ---------------------------------------------------------------------------------------------

def test_mimic_loss_is_mean_squared_error_over_batch_and_classes():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [3.0, 2.0]])
    assert mimic_loss(s, t).item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    assert mimic_loss(t, t).item() == 0.0


def test_kd_loss_by_hand():
    T = 2.0
    s = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    t = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])

    def softmax(row):
        e = [math.exp(v / T) for v in row]
        return [v / sum(e) for v in e]

    kls = []
    for srow, trow in zip(s.tolist(), t.tolist()):
        p_s, p_t = softmax(srow), softmax(trow)
        kls.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)))
    expected = T * T * sum(kls) / 2  # T^2 * KL(teacher || student), mean over the batch
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def test_alpha_mixes_distillation_and_cross_entropy():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.5, 2.0, -0.5]])
    labels = torch.tensor([0, 1])
    indices = torch.tensor([1, 0])
    targets = CachedTargets(teacher[[1, 0]])  # stored by index: index 1 holds row 0, index 0 row 1
    ce = torch.nn.functional.cross_entropy(logits, labels).item()
    for kind, distill_term in (("mimic", mimic_loss(logits, teacher).item()),
                               ("kd", kd_loss(logits, teacher, 3.0).item())):
        for alpha in (1.0, 0.3):
            loss = DistillLoss(kind, targets, alpha=alpha, temperature=3.0)(logits, labels, indices, None)
            assert loss.item() == pytest.approx(alpha * distill_term + (1 - alpha) * ce, rel=1e-6)

    def never(indices, images):
        raise AssertionError("alpha = 0 must not consult the teacher")

    assert DistillLoss("mimic", never, alpha=0.0)(logits, labels, indices, None).item() == pytest.approx(ce)
    with pytest.raises(ValueError, match="alpha"):
        DistillLoss("mimic", targets, alpha=1.5)


# --- transfer set ---------------------------------------------------------------------------------------

def test_transfer_set_is_deterministic_and_laid_out_by_copy():
    images = torch.randint(0, 255, (10, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(10)
    aug = Augment(crop_padding=2, flip=True, cutout=4)
    a, la = make_transfer_set(images, labels, 2, aug, mean=(0.286,), seed=7)
    b, _ = make_transfer_set(images, labels, 2, aug, mean=(0.286,), seed=7)
    c, _ = make_transfer_set(images, labels, 2, aug, mean=(0.286,), seed=8)
    assert a.shape == (30, 1, 28, 28) and a.dtype == torch.uint8 and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:10], images) and not torch.equal(a[10:20], images) and not torch.equal(a[10:20], a[20:])
    assert torch.equal(la, labels.repeat(3))
    with pytest.raises(ValueError, match="augmentation"):
        make_transfer_set(images, labels, 1, Augment.off(), mean=(0.286,), seed=0)


def test_loader_with_indices_yields_each_samples_index():
    from nondeep.data import TensorLoader

    images = torch.randint(0, 255, (50, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(50) % 10
    loader = TensorLoader(images, labels, 16, (0.5,), (0.25,), shuffle=True, seed=3, with_indices=True)
    loader.set_epoch(1)
    seen = []
    for x, y, idx in loader:
        assert torch.equal(y, labels[idx])
        torch.testing.assert_close(x, (images[idx].float() / 255 - 0.5) / 0.25)
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(50))
    assert len(next(iter(TensorLoader(images, labels, 16, (0.5,), (0.25,))))) == 2  # off by default


# --- the cache ------------------------------------------------------------------------------------------

def test_cache_miss_then_hit_does_not_run_the_teacher(tiny_fashion, teacher, tmp_path, monkeypatch):
    counter = _CountCalls(monkeypatch)
    cache = tmp_path / "cache"
    first = distill(_cfg(tiny_fashion, tmp_path / "a", epochs=1), [teacher], cache_dir=cache)
    assert first["distill"]["cache"] == "miss" and counter.calls > 0
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and Path(first["distill"]["cache_file"]) == files[0]
    counter.calls = 0
    second = distill(_cfg(tiny_fashion, tmp_path / "b", epochs=1), [teacher], cache_dir=cache)
    assert second["distill"]["cache"] == "hit" and counter.calls == 0
    assert second["test_accuracy"] == first["test_accuracy"]
    assert second["teacher_test_accuracy"] == first["teacher_test_accuracy"] > 50
    on_disk = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert on_disk["teacher_agreement"] == second["teacher_agreement"]
    assert on_disk["distill"]["teachers"][0]["sha256"] == read_checkpoint(teacher)[1]["sha256"]


def test_cache_file_for_another_setup_is_refused(tiny_fashion, teacher, random_teacher, tmp_path):
    pinned = tmp_path / "pinned.safetensors"  # one file named by the user: checked against the key on read
    with pytest.raises(DistillError):  # fail fast: bad options before any work
        distill(_cfg(tiny_fashion, tmp_path / "x"), [teacher], teacher_online=True, transfer_copies=1)
    cfg = _cfg(tiny_fashion, tmp_path / "a", epochs=1, max_train_samples=256)
    assert distill(cfg, [teacher], cache_dir=pinned)["distill"]["cache"] == "miss"
    with pytest.raises(TeacherCacheError, match=r"differs in: .*teachers.*delete .*--no-cache"):
        distill(_cfg(tiny_fashion, tmp_path / "b", max_train_samples=256), [random_teacher], cache_dir=pinned)
    with pytest.raises(CheckpointError, match=r"differs in: .*num_train"):
        distill(_cfg(tiny_fashion, tmp_path / "c", max_train_samples=128), [teacher], cache_dir=pinned)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # refused before training


def test_corrupt_cache_is_refused(tiny_fashion, teacher, tmp_path):
    cache = tmp_path / "cache.safetensors"
    distill(_cfg(tiny_fashion, tmp_path / "a", epochs=1, max_train_samples=128), [teacher], cache_dir=cache)
    data = bytearray(cache.read_bytes())
    data[-10] ^= 0xFF  # a flipped bit in the logits
    cache.write_bytes(bytes(data))
    with pytest.raises(TeacherCacheError, match="checksum"):
        distill(_cfg(tiny_fashion, tmp_path / "b", max_train_samples=128), [teacher], cache_dir=cache)
    cache.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(TeacherCacheError, match="corrupt or truncated"):
        distill(_cfg(tiny_fashion, tmp_path / "c", max_train_samples=128), [teacher], cache_dir=cache)
    ok = distill(_cfg(tiny_fashion, tmp_path / "d", epochs=1, max_train_samples=128), [teacher], cache_dir=cache,
                 use_cache=False)  # --no-cache: neither read nor written
    assert ok["distill"]["cache"] == "off" and len(cache.read_bytes()) == len(data) // 2


def test_ensemble_caches_the_mean_of_the_teachers_logits(tiny_fashion, teacher, random_teacher, tmp_path):
    cache = tmp_path / "ens.safetensors"
    cfg = _cfg(tiny_fashion, tmp_path / "a", epochs=1, max_train_samples=64, crop_padding=2)
    summary = distill(cfg, [teacher, random_teacher], cache_dir=cache, transfer_copies=1)
    assert summary["distill"]["transfer_set_size"] == 128 and len(summary["distill"]["teachers"]) == 2
    from safetensors.torch import load_file

    cached = load_file(cache)["train_logits"]
    train_loader, _, info = build_loaders("fashion-mnist", data_dir=str(tiny_fashion), max_train_samples=64,
                                          augment=Augment.off(), val_split=cfg.val_split)  # the student's split
    images, _ = make_transfer_set(train_loader.images, train_loader.labels, 1, Augment(crop_padding=2, flip=False),
                                  info.mean, seed=0)
    from nondeep.checkpoint import load_model

    each = [logits_over_images(load_model(p)[0], images, info.mean, info.std) for p in (teacher, random_teacher)]
    assert not torch.allclose(each[0], each[1])
    torch.testing.assert_close(cached, (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-5)


# --- training -------------------------------------------------------------------------------------------

def test_distillation_raises_agreement_with_the_teacher(tiny_fashion, teacher, tmp_path):
    summary = distill(_cfg(tiny_fashion, tmp_path / "run", epochs=3), [teacher], use_cache=False)
    assert summary["teacher_agreement"] >= summary["teacher_agreement_at_init"] + 30
    assert summary["teacher_agreement"] > 80
    for name in ("last.safetensors", "best.safetensors", "metrics.csv", "summary.json", "config.yaml"):
        assert (tmp_path / "run" / name).is_file(), name
    _, meta = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta["run_meta"]["distill"]["loss"] == "mimic" and meta["run_meta"]["distill"]["cache"] == "off"


def test_cached_and_online_modes_agree_exactly_without_augmentation(tiny_fashion, teacher, tmp_path):
    """With no augmentation the two modes see the same images in the same order: same weights. (This is
    what proves the cached logits are looked up for the right samples.)"""
    kw = dict(epochs=1, max_train_samples=256, deterministic=True)
    cached = distill(_cfg(tiny_fashion, tmp_path / "cached", **kw), [teacher], use_cache=False)
    online = distill(_cfg(tiny_fashion, tmp_path / "online", **kw), [teacher], teacher_online=True)
    assert online["distill"]["cache"] == "online"
    a, _ = read_checkpoint(tmp_path / "cached" / "last.safetensors")
    b, _ = read_checkpoint(tmp_path / "online" / "last.safetensors")
    for key in (k for k in a if k.startswith("model.")):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert cached["teacher_agreement"] == online["teacher_agreement"]


def test_teacher_trained_on_other_data_is_refused(tiny_fashion, teacher, tmp_path):
    _, meta = read_checkpoint(teacher)
    meta = {k: v for k, v in meta.items() if k not in ("sha256", "format")}
    meta["data"] = dict(meta["data"], classes=[f"c{i}" for i in range(10)], name="other")
    path = tmp_path / "other.safetensors"
    save_checkpoint(path, create_model(meta["model"], **meta["model_kwargs"]), meta)
    with pytest.raises(CheckpointError, match="differs from the student's data .* classes"):
        distill(_cfg(tiny_fashion, tmp_path / "run"), [str(path)], use_cache=False)


# --- CLI, lab, config -----------------------------------------------------------------------------------

def test_cli_distill(tiny_fashion, teacher, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["distill", "--teacher", teacher, "--student", "mimic_snn_1k", "--loss", "kd", "--alpha", "0.5",
            "--temperature", "2", "--data-dir", str(tiny_fashion), "--epochs", "1", "--max-train-samples", "128",
            "--out", str(out), "--no-progress", "--num-workers", "0", "--no-flip", "--crop-padding", "0",
            "--optimizer", "adamw", "--lr", "0.001", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "teacher_agreement" in printed and "teacher logits: miss" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "mimic_snn_1k" and summary["distill"]["loss"] == "kd"
    assert summary["distill"]["alpha"] == 0.5 and summary["distill"]["temperature"] == 2.0
    assert "teacher_test_accuracy" in summary and "teacher_agreement" in summary
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # the run folder exists: refused


def test_mimic_yaml_recipe_matches_the_lab():
    from nondeep.experiments.mimic import MIMIC_RECIPE
    from nondeep.train import load_config

    cfg = load_config(REPO / "configs" / "mimic_snn.yaml")
    for key, value in MIMIC_RECIPE.items():
        assert getattr(cfg, key) == value, key
    assert yaml.safe_load((REPO / "configs" / "mimic_snn.yaml").read_text())["model"].startswith("mimic_")
