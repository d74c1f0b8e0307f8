"""Every learning-rate schedule at every step, against its closed form or torch's own scheduler: the
warm-up's first and last steps, the step milestones themselves, and the last step of training; and the
step skipped on the device under on_nan skip."""

import copy
import dataclasses
import math

import pytest
import torch

from nondeep.train import TrainConfig
from nondeep.train.optim import build_optimizer, lr_at, skip_if_nonfinite

LR, TOTAL, PER_EPOCH = 0.1, 100, 10


def _schedule(cfg, total=TOTAL, per_epoch=PER_EPOCH):
    return [lr_at(step, total, per_epoch, cfg) for step in range(total)]


def _torch_schedule(scheduler_cls, total=TOTAL, **kwargs):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    scheduler = scheduler_cls(optimizer, **kwargs)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("total", [100, 50])
def test_step_schedule_equals_torch_multisteplr_at_every_step(total):
    cfg = TrainConfig(lr=LR, schedule="step", step_milestones=[0.3, 0.6, 0.8], step_gamma=0.2)
    expected = _torch_schedule(torch.optim.lr_scheduler.MultiStepLR, total=total,
                               milestones=[round(m * total) for m in (0.3, 0.6, 0.8)], gamma=0.2)
    assert _schedule(cfg, total) == pytest.approx(expected, rel=1e-12)
    # the milestones themselves: the decay applies from step 30 of 100 on, not from step 31
    m = round(0.3 * total)
    assert lr_at(m - 1, total, PER_EPOCH, cfg) == pytest.approx(LR)
    assert lr_at(m, total, PER_EPOCH, cfg) == pytest.approx(LR * 0.2)


def test_cosine_without_warmup_equals_torch_cosineannealinglr():
    cfg = TrainConfig(lr=LR, schedule="cosine", warmup_epochs=0)
    expected = _torch_schedule(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=TOTAL, eta_min=0.0)
    assert _schedule(cfg) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("warmup_epochs", [0.0, 0.5, 2.0])
def test_cosine_closed_form_at_every_step(warmup_epochs):
    cfg = TrainConfig(lr=LR, schedule="cosine", warmup_epochs=warmup_epochs)
    w = int(warmup_epochs * PER_EPOCH)
    expected = [LR * (s + 1) / w if s < w else LR * 0.5 * (1 + math.cos(math.pi * (s - w) / (TOTAL - w)))
                for s in range(TOTAL)]
    assert _schedule(cfg) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if w:
        assert lr_at(w - 1, TOTAL, PER_EPOCH, cfg) == pytest.approx(LR)  # the warm-up ends at the peak
    assert lr_at(w, TOTAL, PER_EPOCH, cfg) == pytest.approx(LR)  # and the decay starts there
    last = LR * 0.5 * (1 + math.cos(math.pi * (TOTAL - 1 - w) / (TOTAL - w)))
    assert lr_at(TOTAL - 1, TOTAL, PER_EPOCH, cfg) == pytest.approx(last, rel=1e-12)


def test_step_schedule_with_warmup_at_every_step():
    cfg = TrainConfig(lr=LR, schedule="step", warmup_epochs=1, step_milestones=[0.5, 0.9], step_gamma=0.1)
    expected = [LR * (s + 1) / 10 if s < 10 else LR * 0.1 ** ((s >= 50) + (s >= 90)) for s in range(TOTAL)]
    assert _schedule(cfg) == pytest.approx(expected, rel=1e-12)


def test_constant_schedule_with_and_without_warmup():
    assert _schedule(TrainConfig(lr=LR, schedule="constant")) == [LR] * TOTAL
    warm = _schedule(TrainConfig(lr=LR, schedule="constant", warmup_epochs=2))
    assert warm == pytest.approx([LR * (s + 1) / 20 for s in range(20)] + [LR] * 80, rel=1e-12)


def test_onecycle_closed_form_at_every_step():
    """Linear from lr/10 to lr over the first 20% of steps, then linear to 0 at the end of training."""
    expected = [LR * (0.1 + 0.9 * (s / TOTAL) / 0.2) if s < 20 else LR * (1 - s / TOTAL) / 0.8
                for s in range(TOTAL)]
    assert _schedule(TrainConfig(lr=LR, schedule="onecycle")) == pytest.approx(expected, rel=1e-12)
    # warm-up epochs do not apply to onecycle, which has its own rise
    assert _schedule(TrainConfig(lr=LR, schedule="onecycle", warmup_epochs=3)) == pytest.approx(expected, rel=1e-12)


def test_optimizer_decays_only_the_weights_of_convs_and_linears():
    from torch import nn

    from nondeep.train.optim import build_optimizer

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    model[1].weight.requires_grad_(False)  # a frozen parameter is left out
    sgd = build_optimizer(model, TrainConfig(lr=0.3, momentum=0.8, weight_decay=1e-3))
    assert isinstance(sgd, torch.optim.SGD)
    decay, no_decay = sgd.param_groups
    assert [p.shape for p in decay["params"]] == [(2, 1, 3, 3), (3, 8)] and decay["weight_decay"] == 1e-3
    assert [p.shape for p in no_decay["params"]] == [(2,), (2,), (3,)] and no_decay["weight_decay"] == 0.0
    assert (decay["lr"], decay["momentum"], decay["nesterov"]) == (0.3, 0.8, True)
    assert not build_optimizer(model, TrainConfig(nesterov=False)).param_groups[0]["nesterov"]
    assert not build_optimizer(model, TrainConfig(momentum=0.0)).param_groups[0]["nesterov"]  # torch refuses it
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", lr=2e-3, weight_decay=0.05))  # not the default
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0] and adamw.param_groups[0]["lr"] == 2e-3


def test_a_nonfinite_step_is_skipped_on_the_device_leaving_weights_and_optimizer_state():
    """on_nan skip: the fused step armed by skip_if_nonfinite leaves every weight and every optimizer state as it
    was when the loss or a gradient is not finite (the first step included), and steps as torch's own (the
    unfused optimizer of on_nan stop) when both are finite."""
    for optimizer_name in ("sgd", "adamw"):
        cfg = TrainConfig(on_nan="skip", optimizer=optimizer_name, lr=0.1)
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        reference = copy.deepcopy(model)
        optimizer = build_optimizer(model, cfg)
        plain = build_optimizer(reference, dataclasses.replace(cfg, on_nan="stop"))
        assert optimizer.defaults["fused"] and not plain.defaults["fused"]
        x = torch.randn(8, 4)
        for i, poisoned in enumerate(["loss", None, "gradient", None]):
            before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
            loss = model(x).square().mean() * (float("nan") if poisoned == "loss" else 1.0)
            optimizer.zero_grad()
            loss.backward()
            if poisoned == "gradient":  # a finite loss: only the gradient tells
                model.bias.grad[0] = float("inf")
            keep = skip_if_nonfinite(optimizer, loss)
            optimizer.step()
            assert float(keep) == (0.0 if poisoned else 1.0)
            if poisoned:
                assert all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items()), (optimizer_name, i)
                for k, state in optimizer.state_dict()["state"].items():  # AdamW's first: made, at its zeros
                    was = before[1]["state"].get(k, {n: torch.zeros_like(v) for n, v in state.items()})
                    assert all(torch.equal(v, was[n]) for n, v in state.items()), (optimizer_name, i, k)
                continue
            plain.zero_grad()
            reference(x).square().mean().backward()
            plain.step()
            for k, v in model.state_dict().items():
                torch.testing.assert_close(v, reference.state_dict()[k], rtol=1e-6, atol=1e-7)
