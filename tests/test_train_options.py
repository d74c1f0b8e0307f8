"""Each trainer promise through `train()` itself, on tiny synthetic data: the train loader is shuffled and
the eval loader is not, resume with augmentation, dropout and EMA on is bit-identical, the EMA follows its
formula and is what evaluation uses, checkpoints by the minute, the shipped configs train, and the options
(channels_last, cpu_bf16, grad_clip, cutout, label_smoothing, compile, val_split) do what they say."""

import contextlib
import shutil
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from nondeep.checkpoint import read_checkpoint
from nondeep.data import Augment, build_loaders, load_arrays
from nondeep.data.sampling import epoch_indices
from nondeep.train import TrainConfig, config_from_dict, evaluate_checkpoint, load_config, train
from nondeep.train import loop

REPO = Path(__file__).resolve().parents[1]


def _cfg(data, out, **kw):
    # The synthetic classes are squares at fixed places: no flip, no crop unless a test asks.
    base = dict(model="parnet_tiny", data="fashion-mnist", data_dir=str(data), out=str(out), epochs=1,
                batch_size=32, max_train_samples=64, lr=0.1, progress=False, num_workers=0, seed=0,
                model_kwargs={"width_multiplier": 0.5}, flip=False, crop_padding=0, val_split=0.0,
                deterministic=True, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _tensors(run, prefix=""):
    tensors, _ = read_checkpoint(Path(run) / "last.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith(prefix)}


class _Spy:
    """Wraps loop.build_model (the model the trainer trains; preflight's memory probe is built apart) or
    loop.build_loaders: keeps what the trainer built."""

    def __init__(self, monkeypatch, name):
        self.real, self.results = getattr(loop, name), []
        monkeypatch.setattr(loop, name, self)

    def __call__(self, *args, **kwargs):
        self.results.append(self.real(*args, **kwargs))
        return self.results[-1]


# --- data order --------------------------------------------------------------------------------------------

def test_build_loaders_shuffles_the_train_split_per_epoch_and_keeps_the_eval_order(tiny_fashion):
    train_loader, eval_loader, _ = build_loaders("fashion-mnist", data_dir=str(tiny_fashion), batch_size=64,
                                                 augment=Augment.off(), with_indices=True, seed=3)
    orders = []
    for epoch in (0, 1):
        train_loader.set_epoch(epoch)
        orders.append(torch.cat([idx for _, _, idx in train_loader]))
    assert torch.equal(orders[0], epoch_indices(512, seed=3, epoch=0, shuffle=True))
    assert torch.equal(orders[0].sort().values, torch.arange(512))  # every image once
    assert not torch.equal(orders[0], torch.arange(512)) and not torch.equal(orders[0], orders[1])
    _, test_labels, _ = load_arrays("fashion-mnist", "test", str(tiny_fashion))
    assert torch.equal(torch.cat([y for _, y in eval_loader]), test_labels)  # the test split, in file order


def test_the_trainer_gets_the_shuffled_loader(tiny_fashion, tmp_path, monkeypatch):
    spy = _Spy(monkeypatch, "build_loaders")
    train(_cfg(tiny_fashion, tmp_path / "run", max_train_samples=None, batch_size=64))
    train_loader, eval_loader, _ = spy.results[0]
    _, train_labels, _ = load_arrays("fashion-mnist", "train", str(tiny_fashion))
    train_loader.set_epoch(0)
    first_y = next(iter(train_loader))[1]
    assert torch.equal(first_y, train_labels[epoch_indices(512, seed=0, epoch=0, shuffle=True)[:64]])
    assert not torch.equal(first_y, train_labels[:64])
    assert not eval_loader.shuffle


# --- exact resume ------------------------------------------------------------------------------------------

NOISY = dict(epochs=2, max_train_samples=64, batch_size=16, flip=True, crop_padding=2, cutout=6, ema_decay=0.9,
             model_kwargs={"width_multiplier": 0.5, "drop_rate": 0.3})  # 4 steps an epoch


def _stop_at(monkeypatch, stop_step):
    real = loop.lr_at

    def lr_at_then_signal(step, *args):
        if step == stop_step:
            signal.raise_signal(signal.SIGTERM)
        return real(step, *args)

    monkeypatch.setattr(loop, "lr_at", lr_at_then_signal)
    return real


def test_resume_with_augmentation_dropout_and_ema_is_bit_identical(tiny_fashion, tmp_path, monkeypatch):
    train(_cfg(tiny_fashion, tmp_path / "straight", **NOISY))
    real_lr_at = _stop_at(monkeypatch, 5)  # mid-epoch 2
    assert train(_cfg(tiny_fashion, tmp_path / "stopped", **NOISY))["stopped_by"] == "SIGTERM"
    monkeypatch.setattr(loop, "lr_at", real_lr_at)
    shutil.copytree(tmp_path / "stopped", tmp_path / "no_rng")
    train(_cfg(tiny_fashion, tmp_path / "stopped", **NOISY), resume=True)
    straight, resumed = _tensors(tmp_path / "straight"), _tensors(tmp_path / "stopped")
    assert sorted(straight) == sorted(resumed)
    for key in straight:  # model, optimizer state, EMA and the RNG state
        assert torch.equal(straight[key], resumed[key]), key
    # The test can fail: without the saved RNG state, dropout draws other masks after the resume.
    monkeypatch.setattr(loop.torch, "set_rng_state", lambda state: None)
    torch.manual_seed(12345)
    train(_cfg(tiny_fashion, tmp_path / "no_rng", **NOISY), resume=True)
    assert not torch.equal(_tensors(tmp_path / "no_rng")["model.fc.weight"], straight["model.fc.weight"])


# --- EMA ---------------------------------------------------------------------------------------------------

def test_ema_follows_its_formula_and_is_what_evaluation_uses(tiny_fashion, tmp_path, monkeypatch):
    seen = []
    real_update = loop.ModelEMA.update_parameters

    def record(self, model, keep=None):
        assert keep is None  # on_nan stop: nothing masked
        seen.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return real_update(self, model, keep)

    monkeypatch.setattr(loop.ModelEMA, "update_parameters", record)
    emas, evaluated = [], []
    real_init, real_evaluate = loop.ModelEMA.__init__, loop.evaluate

    def init(self, *args):
        emas.append(self)
        real_init(self, *args)

    def evaluate(model, *args, **kwargs):
        evaluated.append(model)
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(loop.ModelEMA, "__init__", init)
    monkeypatch.setattr(loop, "evaluate", evaluate)
    out = tmp_path / "run"
    train(_cfg(tiny_fashion, out, epochs=2, ema_decay=0.8))  # 2 steps an epoch
    assert len(seen) == 4  # one update per optimizer step
    # every evaluation (2 epochs, then the final test and its fused copy) is of the EMA model
    assert len(emas) == 1 and len(evaluated) == 4 and evaluated[:3] == [emas[0].module] * 3
    assert evaluated[3] is not emas[0].module
    expected = dict(seen[0])  # the first update copies the weights
    for params in seen[1:]:
        expected = {k: 0.8 * expected[k] + 0.2 * params[k] for k in params}
    ema = _tensors(out, "ema.module.")
    for name, value in expected.items():
        torch.testing.assert_close(ema[f"ema.module.{name}"], value, rtol=1e-6, atol=1e-7)
    # The epoch metrics are the EMA model's: evaluating the checkpoint with use_ema gives them back.
    last_row = (out / "metrics.csv").read_text().splitlines()[-1].split(",")
    with_ema = evaluate_checkpoint(out / "last.safetensors", data_dir=str(tiny_fashion), use_ema=True)
    without = evaluate_checkpoint(out / "last.safetensors", data_dir=str(tiny_fashion))
    assert float(last_row[3]) == pytest.approx(with_ema["eval_loss"], rel=1e-6)
    assert with_ema["eval_loss"] != pytest.approx(without["eval_loss"], rel=1e-6)


# --- checkpoints by the minute -----------------------------------------------------------------------------

def test_checkpoint_every_minutes_uses_the_monotonic_clock(tiny_fashion, tmp_path, monkeypatch):
    """A fake clock advances 20 s a step: with --checkpoint-every-minutes 1 a mid-epoch checkpoint falls on
    every third step after the last save (60 s is due, not only more than 60 s)."""
    clock = {"now": 0.0}
    real_lr_at = loop.lr_at

    def lr_at_and_tick(step, *args):
        clock["now"] += 20.0
        return real_lr_at(step, *args)

    saved = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "lr_at", lr_at_and_tick)
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(loop, "save_checkpoint",
                        lambda path, model, meta, *a, **k: (saved.append(meta), real_save(path, model, meta, *a, **k)))
    train(_cfg(tiny_fashion, tmp_path / "run", epochs=2, max_train_samples=128, batch_size=16,
                    checkpoint_every_minutes=1.0))
    mid_epoch = [m["step"] for m in saved if m["batch_in_epoch"] != 0]
    assert mid_epoch == [3, 6, 11, 14]  # 8 steps an epoch; the epoch-end save at step 8 restarts the count


# --- shipped configs ---------------------------------------------------------------------------------------

# Stand-ins for the shipped models too slow for a unit test's step (the real one is still built, on "meta").
SMALL_STAND_IN = {"wrn_28_10": "wrn_10_1"}


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_config_loads_and_trains_a_step(config, tiny_fashion, tmp_path):
    from nondeep.models import create_model

    recipe = load_config(REPO / "configs" / config)
    with torch.device("meta"):
        create_model(recipe.model, **recipe.model_kwargs)
    small = config_from_dict({"model": SMALL_STAND_IN.get(recipe.model, recipe.model), "data": "fashion-mnist",
                              "data_dir": str(tiny_fashion), "out": str(tmp_path / "run"), "epochs": 1,
                              "batch_size": 4, "max_train_samples": 4, "val_split": 0.01, "progress": False,
                              "num_workers": 0, "threads": 1}, base=recipe)
    train(small)
    _, meta = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta["step"] == 1
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    for key in ("optimizer", "lr", "schedule", "weight_decay", "label_smoothing", "model_kwargs", "step_milestones"):
        assert written[key] == getattr(recipe, key), key


# --- options -----------------------------------------------------------------------------------------------

def test_grad_clip_bounds_the_step_to_lr_times_max_norm(tiny_fashion, tmp_path, monkeypatch):
    """Plain SGD, one step: the parameters move by exactly lr x the clipped gradient norm (over all
    parameters together)."""
    spy = _Spy(monkeypatch, "build_model")
    monkeypatch.setattr(loop, "build_optimizer", lambda model, cfg: (
        spy.results.append({k: v.detach().clone() for k, v in model.named_parameters()}),
        torch.optim.SGD(model.parameters(), lr=cfg.lr))[1])
    out = tmp_path / "run"
    train(_cfg(tiny_fashion, out, max_train_samples=32, schedule="constant", grad_clip=1e-3))
    model, before = spy.results
    delta = torch.cat([(p.detach() - before[k]).flatten() for k, p in model.named_parameters()])
    assert delta.norm().item() == pytest.approx(0.1 * 1e-3, rel=1e-4)


def test_channels_last_runs_in_that_layout_and_matches_the_default(tiny_fashion, tmp_path, monkeypatch):
    real, built, layouts = loop.build_model, [], []

    def build(*args, **kwargs):
        built.append(real(*args, **kwargs))
        run = len(built)
        # one input channel is channels_last and contiguous at once: look at the first stream's 8-channel input
        built[-1].streams[0].register_forward_pre_hook(lambda m, a: layouts.append(
            (run, a[0].is_contiguous(memory_format=torch.channels_last))) if m.training else None)
        return built[-1]

    monkeypatch.setattr(loop, "build_model", build)
    train(_cfg(tiny_fashion, tmp_path / "cl", channels_last=True))
    train(_cfg(tiny_fashion, tmp_path / "default"))
    assert built[0].stem[0].conv3x3.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert layouts == [(1, True), (1, True), (2, False), (2, False)]  # two training steps a run
    a, b = _tensors(tmp_path / "cl", "model."), _tensors(tmp_path / "default", "model.")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)


def test_cpu_bf16_steps_in_bf16_on_float32_weights_and_tracks_the_float32_run(tiny_fashion, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "native_cpu_bf16", lambda: True)  # emulated bf16 computes the same, only slower
    seen = _training_inputs(monkeypatch)
    train(_cfg(tiny_fashion, tmp_path / "bf16", cpu_bf16=True))
    train(_cfg(tiny_fashion, tmp_path / "fp32"))
    assert [logits.dtype for _, logits in seen] == [torch.bfloat16] * 2 + [torch.float32] * 2  # two steps a run
    a, b = _tensors(tmp_path / "bf16", "model."), _tensors(tmp_path / "fp32", "model.")
    assert {v.dtype for v in a.values() if v.is_floating_point()} == {torch.float32}
    moved = [(a[k] - b[k]).abs().max() for k in a if a[k].is_floating_point()]
    assert 0 < max(moved) < 2e-2  # bf16 rounding (8 bits of mantissa) shifts two steps of lr 0.1 this little


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # the context is built, not entered
def test_cpu_bf16_is_a_cpu_option_and_amp_a_cuda_one():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert isinstance(loop.training_autocast(_cfg("d", "o"), cpu), contextlib.nullcontext)
    assert isinstance(loop.training_autocast(_cfg("d", "o", cpu_bf16=True, amp=False), cuda), contextlib.nullcontext)
    on_cuda = loop.training_autocast(_cfg("d", "o"), cuda)
    assert (on_cuda.device, on_cuda.fast_dtype) == ("cuda", torch.bfloat16)


def _training_inputs(monkeypatch):
    """Record (input, logits) of every training forward pass of the model the trainer builds."""
    real = loop.build_model
    seen = []

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_hook(
            lambda m, a, out: seen.append((a[0].detach(), out.detach())) if m.training else None)
        return model

    monkeypatch.setattr(loop, "build_model", build)
    return seen


@pytest.mark.parametrize("options", [dict(crop_padding=2, flip=True, cutout=4, eval_batch_size=48, num_workers=1,
                                          image_size=32, in_chans=1, val_split=0.25, seed=7),
                                     dict(crop_padding=0, flip=False, cutout=0)])
def test_the_trainer_asks_build_loaders_for_what_the_config_says(tiny_fashion, tmp_path, monkeypatch, options):
    asked, real = [], loop.build_loaders
    monkeypatch.setattr(loop, "build_loaders", lambda *a, **kw: asked.append((a, kw)) or real(*a, **kw))
    cfg = _cfg(tiny_fashion, tmp_path / "run", max_train_samples=32, **options)  # one step
    train(cfg)
    (args, kwargs), = asked
    fit_batches = kwargs.pop("fit_batches")  # lowers the batch sizes if a batch would not fit the device
    assert fit_batches.func is loop.fit_batches and fit_batches.args == (cfg, torch.device("cpu"))
    augment = Augment(crop_padding=cfg.crop_padding, flip=cfg.flip, cutout=cfg.cutout)
    assert args == ("fashion-mnist",) and kwargs == dict(
        data_dir=str(tiny_fashion), batch_size=32, eval_batch_size=cfg.eval_batch_size, augment=augment,
        val_split=cfg.val_split, max_train_samples=32, device=torch.device("cpu"), seed=cfg.seed, rank=0,
        world_size=1, num_workers=cfg.num_workers, with_indices=False, image_size=cfg.image_size,
        in_chans=cfg.in_chans)


def test_cutout_zeroes_one_square_per_training_image(tiny_fashion, tmp_path, monkeypatch):
    seen = _training_inputs(monkeypatch)
    train(_cfg(tiny_fashion, tmp_path / "run", cutout=8))
    for x, _ in seen:
        zeros = (x == 0).sum((1, 2, 3))
        # an 8x8 square centred anywhere: 16 (centred on a corner) to 64 pixels; no other pixel is exactly 0
        assert ((zeros >= 16) & (zeros <= 64)).all(), zeros


def test_label_smoothing_is_the_training_loss(tiny_fashion, tmp_path, monkeypatch):
    seen = _training_inputs(monkeypatch)
    spy = _Spy(monkeypatch, "build_loaders")
    out = tmp_path / "run"
    train(_cfg(tiny_fashion, out, max_train_samples=32, label_smoothing=0.3))  # one step
    train_loader = spy.results[0][0]
    train_loader.set_epoch(0)
    _, y = next(iter(train_loader))
    (_, logits), = seen
    train_loss = float((out / "metrics.csv").read_text().splitlines()[1].split(",")[1])
    assert train_loss == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.3).item(), rel=1e-6)
    assert train_loss != pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)  # 4e-4 apart at init


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_captured_step_on_a_gpu_trains_the_weights_of_the_eager_step(tiny_fashion, tmp_path):
    """Issue 14: the step compiled by inductor and replayed from CUDA graphs (reduce-overhead) against the eager
    step, float32 on both (no autocast), 4 steps. Inductor fuses the pointwise work and reorders its sums, so
    the weights agree to float32 rounding grown over a few steps, not bit for bit."""
    kw = dict(device="cuda", amp=False, epochs=2, max_train_samples=64)
    train(_cfg(tiny_fashion, tmp_path / "captured", compile=True, compile_mode="reduce-overhead", **kw))
    train(_cfg(tiny_fashion, tmp_path / "eager", **kw))
    a, b = _tensors(tmp_path / "captured", "model."), _tensors(tmp_path / "eager", "model.")
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)


def test_compile_trains_the_same_weights_and_saves_plain_names(tiny_fashion, tmp_path, monkeypatch):
    """torch.compile (with dynamo's eager backend here: inductor's C++ build is too slow for a unit test)
    wraps the model for training only; the checkpoint holds the plain model's names and the same weights."""
    real_compile = torch.compile
    compiled = []
    monkeypatch.setattr(loop.torch, "compile",
                        lambda model, **kw: compiled.append(kw) or real_compile(model, backend="eager"))
    train(_cfg(tiny_fashion, tmp_path / "compiled", compile=True, compile_mode="reduce-overhead"))
    monkeypatch.setattr(loop.torch, "compile", real_compile)
    train(_cfg(tiny_fashion, tmp_path / "eager"))
    # once, in the mode asked for, with static shapes: a second batch size in the process (the speedrun's
    # candidates) gets a graph of its own instead of making the first one's dynamic
    assert compiled == [{"mode": "reduce-overhead", "dynamic": False}]
    a, b = _tensors(tmp_path / "compiled", "model."), _tensors(tmp_path / "eager", "model.")
    assert sorted(a) == sorted(b)  # no "_orig_mod." in the names
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_compile_with_mode_auto_says_which_mode_ran_and_records_it(tiny_fashion, tmp_path, monkeypatch, capsys):
    real_compile = torch.compile
    compiled = []
    monkeypatch.setattr(loop.torch, "compile",
                        lambda model, **kw: compiled.append(kw) or real_compile(model, backend="eager"))
    summary = train(_cfg(tiny_fashion, tmp_path / "run", compile=True))  # compile_mode: auto, on the CPU
    assert compiled == [{"mode": "default", "dynamic": False}]
    assert "the step is compiled with torch.compile mode default (auto on cpu)" in capsys.readouterr().out
    assert summary["config"]["compile_mode"] == "default"
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["compile_mode"] == "default"


def test_val_split_holds_out_part_of_train_for_evaluation(tiny_fashion, tmp_path):
    summary = train(_cfg(tiny_fashion, tmp_path / "run", max_train_samples=None, val_split=0.25, batch_size=64))
    _, meta = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert (meta["data"]["num_train"], meta["data"]["num_eval"]) == (384, 128)
    assert meta["step"] == 384 // 64 and summary["eval_split"] == "val"
