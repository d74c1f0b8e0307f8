"""ModelEMA: torch's EMA (AveragedModel + get_ema_multi_avg_fn, use_buffers) bit for bit, its checkpoint layout,
and no host read after its first update (AveragedModel reads n_averaged twice an update)."""

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nondeep.train.ema import ModelEMA


def _model() -> nn.Module:
    torch.manual_seed(0)  # BatchNorm brings float buffers and an integer one (num_batches_tracked)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def _step(model: nn.Module, i: int) -> None:
    """A stand-in for a training step: BatchNorm's buffers move, the weights change."""
    torch.manual_seed(100 + i)
    model.train()(torch.randn(8, 1, 6, 6))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def _torch_ema(model: nn.Module, decay: float) -> AveragedModel:
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def test_it_equals_torchs_ema_bit_for_bit_with_the_same_state_dict_keys():
    model = _model()
    ours, theirs = ModelEMA(model, 0.8), _torch_ema(model, 0.8)
    for i in range(5):
        _step(model, i)
        ours.update_parameters(model)
        theirs.update_parameters(model)
        mine, reference = ours.state_dict(), theirs.state_dict()
        assert list(mine) == list(reference)
        for key in reference:
            assert torch.equal(mine[key], reference[key]), (i, key)
    assert int(ours.n_averaged) == 5
    assert not torch.equal(ours.module[0].weight, model[0].weight)  # averaged, not a copy


def test_updates_after_a_loaded_state_continue_the_average():
    """A resumed run loads n_averaged > 0: the next update must lerp, not copy, as torch's does."""
    model = _model()
    trained = ModelEMA(model, 0.5)
    for i in range(3):
        _step(model, i)
        trained.update_parameters(model)
    ours, theirs = ModelEMA(model, 0.5), _torch_ema(model, 0.5)
    ours.load_state_dict(trained.state_dict())
    theirs.load_state_dict(trained.state_dict())
    _step(model, 9)
    ours.update_parameters(model)
    theirs.update_parameters(model)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert int(ours.n_averaged) == 4


def _host_reads(monkeypatch, ema: nn.Module, model: nn.Module, updates: int) -> int:
    """Tensor reads to the host (item, tolist, bool, int, float) over `updates` updates."""
    reads = []
    for method in ("item", "tolist", "__bool__", "__int__", "__float__"):
        real = getattr(torch.Tensor, method)
        monkeypatch.setattr(torch.Tensor, method,
                            lambda self, *a, _real=real, **k: (reads.append(1), _real(self, *a, **k))[1])
    for _ in range(updates):
        ema.update_parameters(model)
    monkeypatch.undo()
    return len(reads)


def test_no_host_read_after_the_first_update(monkeypatch):
    model = _model()
    ours, theirs = ModelEMA(model, 0.9), _torch_ema(model, 0.9)
    ours.update_parameters(model)  # reads n_averaged once
    theirs.update_parameters(model)
    assert _host_reads(monkeypatch, ours, model, 3) == 0
    assert _host_reads(monkeypatch, theirs, model, 3) >= 3  # the count can fail: torch's update reads each time


def test_a_masked_update_is_torchs_update_when_kept_and_leaves_everything_when_skipped():
    """on_nan skip: keep 1 is torch's update (the first a copy), keep 0 changes nothing, not even the count."""
    model = _model()
    ours, theirs = ModelEMA(model, 0.8), _torch_ema(model, 0.8)
    for i, kept in enumerate([False, True, False, True, True]):  # a skipped first step: the next one copies
        _step(model, i)
        before = {k: v.clone() for k, v in ours.state_dict().items()}
        ours.update_parameters(model, keep=torch.tensor(1.0 if kept else 0.0))
        if not kept:
            assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items()), i
            continue
        theirs.update_parameters(model)
        reference = theirs.state_dict()
        for key, value in ours.state_dict().items():
            torch.testing.assert_close(value, reference[key], rtol=1e-6, atol=1e-7, msg=f"{i} {key}")
    assert int(ours.n_averaged) == 3


def test_load_state_dict_passes_its_options_on():
    ema = ModelEMA(_model(), 0.9)
    state = {**ema.state_dict(), "unexpected": torch.zeros(1)}
    missing, unexpected = ema.load_state_dict(state, strict=False)  # torch's strict=True would raise
    assert unexpected == ["unexpected"] and not missing
