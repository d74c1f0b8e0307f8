"""The training step without host round trips (issue 14): the trainer's weights and its epoch figures equal
those of a bare PyTorch loop over the same batches, bit for bit on CPU in deterministic mode; the host reads
the device's running sums a bounded number of times an epoch, however many steps it has."""

import copy
import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nondeep.checkpoint import read_checkpoint
from nondeep.train import TrainConfig, train
from nondeep.train import loop
from nondeep.train.optim import build_optimizer, lr_at
from nondeep.train.running import RunningSums


def _cfg(data, out, **kw):
    base = dict(model="parnet_tiny", data_dir=str(data), out=str(out), epochs=2, batch_size=32,
                max_train_samples=96, lr=0.1, progress=False, num_workers=0, seed=3, flip=True, crop_padding=2,
                model_kwargs={"width_multiplier": 0.5}, val_split=0.0, deterministic=True, threads=1,
                label_smoothing=0.1)
    base.update(kw)
    return TrainConfig(**base)


class _Keep:
    """Wraps loop.<name>: returns what the trainer built, keeping a copy (the model's initial weights)."""

    def __init__(self, monkeypatch, name):
        self.real, self.kept = getattr(loop, name), []
        monkeypatch.setattr(loop, name, self)

    def __call__(self, *args, **kwargs):
        built = self.real(*args, **kwargs)
        self.kept.append(copy.deepcopy(built) if isinstance(built, torch.nn.Module) else built)
        return built


def test_the_trainer_equals_a_bare_loop_bit_for_bit(tiny_fashion, tmp_path, monkeypatch):
    models, loaders = _Keep(monkeypatch, "build_model"), _Keep(monkeypatch, "build_loaders")
    cfg = _cfg(tiny_fashion, tmp_path / "run")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # deterministic mode turns cuDNN's autotuning off
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        train(cfg)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
    model, (train_loader, _, _) = models.kept[0], loaders.kept[0]
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch, step, epochs = len(train_loader), 0, []
    for epoch in range(cfg.epochs):
        train_loader.set_epoch(epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in train_loader:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg.epochs * steps_per_epoch, steps_per_epoch, cfg)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.numel()
        epochs.append((loss_sum / seen, 100.0 * correct / seen))
    trained, _ = read_checkpoint(Path(cfg.out) / "last.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(trained[f"model.{name}"], tensor), name
    with open(Path(cfg.out) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for row, (loss, top1) in zip(rows, epochs, strict=True):
        assert float(row["train_top1"]) == pytest.approx(top1, abs=1e-9)
        assert float(row["train_loss"]) == pytest.approx(loss, rel=1e-12)


def _host_reads(monkeypatch, tiny_fashion, out, samples, **kw):
    """How many times the trainer reads a tensor back to the host over a run (Tensor.item, .tolist, bool())."""
    counts = {"reads": 0}
    for method in ("item", "tolist", "__bool__"):
        real = getattr(torch.Tensor, method)

        def counting(self, *args, _real=real, **kwargs):
            counts["reads"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counting)
    monkeypatch.setattr(loop, "REFRESH_SECONDS", float("inf"))  # no progress refresh in a test
    train(_cfg(tiny_fashion, out, epochs=1, max_train_samples=samples, batch_size=16, **kw))
    monkeypatch.undo()
    return counts["reads"]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# torch's AveragedModel would read n_averaged every step (and copy it to the GPU: a sync a step on CUDA)
@pytest.mark.parametrize("device, ema_decay, on_nan", [("cpu", 0.0, "stop"), ("cpu", 0.9, "stop"), ("cpu", 0.9, "skip"),
                                                     pytest.param("cuda", 0.9, "stop", marks=CUDA),
                                                     pytest.param("cuda", 0.9, "skip", marks=CUDA)])
def test_host_reads_do_not_grow_with_the_steps(tiny_fashion, tmp_path, monkeypatch, device, ema_decay, on_nan):
    kw = dict(ema_decay=ema_decay, device=device, on_nan=on_nan)  # skip decides each step on the device
    few = _host_reads(monkeypatch, tiny_fashion, tmp_path / "few", samples=32, **kw)     # 2 steps
    many = _host_reads(monkeypatch, tiny_fashion, tmp_path / "many", samples=160, **kw)  # 10 steps
    assert many == few  # the step adds no read; a .item() a step would add 8 or more


def test_running_sums_keep_the_first_nonfinite_step():
    sums = RunningSums(torch.device("cpu"), loss_sum=1.5, correct=2, seen=4)
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    sums.add(torch.tensor(0.5), logits, labels, step=7)
    sums.add(torch.tensor(float("nan")), logits, labels, step=8)
    sums.add(torch.tensor(float("inf")), logits, labels, step=9)
    totals = sums.read()
    assert totals.first_nonfinite_step == 8 and totals.seen == 10 and totals.correct == 5
    clean = RunningSums(torch.device("cpu"))
    clean.add(torch.tensor(0.25), logits, labels, step=0)
    assert clean.read().first_nonfinite_step is None and clean.read().loss_sum == 0.5
    assert clean.read().partial(3.0) == {"loss_sum": 0.5, "correct": 1, "seen": 2, "seconds": 3.0}


def test_running_sums_leave_out_and_count_the_steps_the_optimizer_skipped():
    sums = RunningSums(torch.device("cpu"))
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    sums.add(torch.tensor(0.5), logits, labels, step=0, keep=torch.tensor(1.0))
    sums.add(torch.tensor(float("nan")), logits, labels, step=1, keep=torch.tensor(0.0))
    sums.add(torch.tensor(0.25), logits, labels, step=2, keep=torch.tensor(0.0))  # skipped for its gradients
    totals = sums.read()
    assert (totals.loss_sum, totals.correct, totals.seen, totals.skipped) == (1.0, 1, 2, 2)
    assert totals.first_nonfinite_step == 1  # still kept: on_nan stop reads it


def test_running_sums_count_exactly_past_float32s_integers():
    """float64 sums: a count past 2**24 (float32's last exact integer) still grows by one."""
    sums = RunningSums(torch.device("cpu"), loss_sum=0.0, correct=2 ** 24, seen=2 ** 24)
    sums.add(torch.tensor(0.0), torch.tensor([[1.0, 0.0]]), torch.tensor([0]), step=0)
    assert sums.read().correct == 2 ** 24 + 1 and sums.read().seen == 2 ** 24 + 1
