"""train/loop.py's pieces and its summary, each against what it promises, on runs of a few seconds (the
mutation run of loop.py needs tests that are fast)."""

import csv
import datetime as dt
import math
import re
import signal
import threading

import pytest
import torch

from nondeep import NondeepError, measure, plots
from nondeep.checkpoint import load_model, read_checkpoint
from nondeep.train import TrainConfig, loop, train
from nondeep.train.optim import lr_at


def _cfg(tiny_fashion, out, **kw):
    base = dict(model="mimic_snn_1k", data="fashion-mnist", data_dir=str(tiny_fashion), out=str(out), epochs=2,
                batch_size=64, lr=0.05, progress=False, num_workers=0, flip=False, crop_padding=0, val_split=0.25)
    return TrainConfig(**{**base, **kw})


# --- devices and folders ----------------------------------------------------------------------------------

def test_resolve_device_auto_follows_cuda_and_cuda_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loop.resolve_device("auto") == torch.device("cpu")
    assert loop.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(NondeepError, match=r"device 'cuda:1' asked for but CUDA is not available: use --device cpu"):
        loop.resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert loop.resolve_device("auto") == torch.device("cuda")
    assert loop.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_default_run_dir_is_runs_time_model_and_dataset_name(tmp_path):
    before = dt.datetime.now().replace(microsecond=0)
    named = loop.default_run_dir(TrainConfig(model="parnet_tiny", data="fashion-mnist"))
    after = dt.datetime.now()
    assert named.parent.as_posix() == "runs"
    match = re.fullmatch(r"(\d{8}-\d{6})-parnet_tiny-fashion-mnist", named.name)
    assert match and before <= dt.datetime.strptime(match[1], "%Y%m%d-%H%M%S") <= after
    folder = tmp_path / "my-images"  # a folder dataset is named by its last part, not its whole path
    named = loop.default_run_dir(TrainConfig(model="wide_resnet", data=str(folder)))
    assert named.name.endswith("-wide_resnet-my-images")


# --- signals ----------------------------------------------------------------------------------------------

def test_stop_request_takes_sigint_and_sigterm_and_gives_them_back(tmp_path):
    def previous_int(*_):
        pass

    def previous_term(*_):
        pass

    old = signal.signal(signal.SIGINT, previous_int), signal.signal(signal.SIGTERM, previous_term)
    try:
        with loop._StopRequest(tmp_path / "last.safetensors") as stop:
            assert signal.getsignal(signal.SIGINT) == stop._handle == signal.getsignal(signal.SIGTERM)
            assert stop.signal is None
        assert signal.getsignal(signal.SIGINT) is previous_int and signal.getsignal(signal.SIGTERM) is previous_term
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])


def test_stop_request_off_the_main_thread_leaves_signals_alone(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    seen = []

    def body():
        with loop._StopRequest(tmp_path / "last.safetensors") as stop:
            seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), stop._previous))

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert seen == [(*before, {})]


def test_first_signal_asks_for_a_stop_a_second_sigint_quits_at_once(tmp_path, capfd):
    checkpoint = tmp_path / "last.safetensors"
    stop = loop._StopRequest(checkpoint)
    stop._handle(signal.SIGTERM, None)
    assert stop.signal == signal.SIGTERM
    assert "nondeep: SIGTERM: saving a checkpoint after this step and stopping" in capfd.readouterr().err
    stop._handle(signal.SIGTERM, None)  # a second SIGTERM only asks again
    with pytest.raises(KeyboardInterrupt, match="at once; no checkpoint was saved yet"):
        stop._handle(signal.SIGINT, None)
    checkpoint.write_bytes(b"x")
    with pytest.raises(KeyboardInterrupt, match=rf"at once; the last checkpoint \({re.escape(str(checkpoint))}\) "
                                                r"is intact: continue with --resume"):
        stop._handle(signal.SIGINT, None)
    first_sigint = loop._StopRequest(checkpoint)
    first_sigint._handle(signal.SIGINT, None)  # the first Ctrl-C only asks
    assert first_sigint.signal == signal.SIGINT


# --- metrics.csv ------------------------------------------------------------------------------------------

def test_metrics_csv_has_the_columns_in_order_and_drops_other_keys(tmp_path):
    rows = [{column: i + 0.5 for i, column in enumerate(loop.METRIC_COLUMNS)} | {"extra": 1}]
    loop._write_metrics(tmp_path / "metrics.csv", rows)
    with open(tmp_path / "metrics.csv", newline="") as f:
        read = list(csv.reader(f))
    assert read[0] == loop.METRIC_COLUMNS
    assert [float(v) for v in read[1]] == [i + 0.5 for i in range(len(loop.METRIC_COLUMNS))]


# --- the progress bar ------------------------------------------------------------------------------------

def _recorded_bars(monkeypatch) -> list:
    """Swaps the trainer's tqdm for a recorder of what the trainer asks of each bar; returns the bars made."""
    made = []

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.steps, self.postfix, self.closed = kwargs, 0, None, False
            made.append(self)

        def update(self, n):
            self.steps += n

        def set_postfix(self, **figures):
            self.postfix = figures

        def close(self):
            self.closed = True

    monkeypatch.setattr(loop, "tqdm", Bar)
    return made


def test_the_progress_bar_counts_the_steps_and_shows_the_epochs_running_figures(tiny_fashion, tmp_path, monkeypatch):
    bars = _recorded_bars(monkeypatch)
    monkeypatch.setattr(loop, "REFRESH_SECONDS", 0.0)  # read the device's sums after every step
    summary = train(_cfg(tiny_fashion, tmp_path / "run", epochs=2, progress=True))
    history = read_checkpoint(summary["checkpoint"])[1]["history"]
    for epoch, (bar, row) in enumerate(zip(bars, history, strict=True), start=1):
        assert bar.kwargs == {"total": 6, "initial": 0, "desc": f"epoch {epoch}/2", "disable": False, "leave": False,
                              "dynamic_ncols": True}  # follows the terminal's width
        assert bar.steps == 6 and bar.closed
        assert bar.postfix["loss"] == f"{row['train_loss']:.3f}" and bar.postfix["acc"] == f"{row['train_top1']:.1f}"
        # the bar's rate is read before the epoch's evaluation, the row's after: the bar's is the higher
        assert bar.postfix["lr"] == f"{row['lr']:.3g}" and int(bar.postfix["img_s"]) >= int(row["train_images_per_sec"])
    bars.clear()
    train(_cfg(tiny_fashion, tmp_path / "quiet", epochs=1, progress=False))
    assert [bar.kwargs["disable"] for bar in bars] == [True]


# --- one short run, its summary and checkpoints ------------------------------------------------------------

@pytest.fixture(scope="module")
def saves(tiny_fashion, tmp_path_factory):
    """A 2-epoch run (384 training images at batch 64: 6 steps an epoch) with a checkpoint every 4 steps,
    recording every checkpoint it saves, the curves it plots and the input its depth is measured on; returns
    (summary, [(file name, meta)], config, [(what, how it was called)])."""
    out = tmp_path_factory.mktemp("loop") / "run"
    cfg = _cfg(tiny_fashion, out, checkpoint_every_steps=4)
    recorded = []
    real_save = loop.save_checkpoint

    def spy(path, model, meta, *args, **kwargs):
        recorded.append((path.name, meta))
        return real_save(path, model, meta, *args, **kwargs)

    calls = []
    real_plot, real_depth = plots.plot_training_curves, measure.depth

    def plot(history, path, **kwargs):
        calls.append(("curves", kwargs))
        return real_plot(history, path, **kwargs)

    def depth(model, input_size=None):
        calls.append(("depth", input_size))
        return real_depth(model, input_size)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "save_checkpoint", spy)
        mp.setattr(plots, "plot_training_curves", plot)
        mp.setattr(measure, "depth", depth)
        summary = train(cfg, run_meta={"purpose": "test"})
    return summary, recorded, cfg, calls


def test_checkpoints_every_n_steps_inside_an_epoch_and_at_each_epochs_end(saves):
    _, recorded, _, _ = saves
    history = recorded[-1][1]["history"]
    val = [row["eval_top1"] for row in history]
    # steps 4 and 8 fall inside epochs (batch 4 of 6, batch 2 of 6); step 12 ends epoch 2, saved as its end;
    # best is saved when an epoch's validation accuracy beats every earlier one
    assert [(name, m["step"], m["epoch"], m["batch_in_epoch"]) for name, m in recorded] == [
        ("last.safetensors", 4, 0, 4),
        ("best.safetensors", 6, 1, 0), ("last.safetensors", 6, 1, 0),
        ("last.safetensors", 8, 1, 2),
        *([("best.safetensors", 12, 2, 0)] if val[1] > val[0] else []),
        ("last.safetensors", 12, 2, 0)]
    mid_epoch = recorded[0][1]["partial_epoch"]  # 4 of epoch 1's 6 steps: part of the epoch's time
    assert mid_epoch["seen"] == 4 * 64 and 0 < mid_epoch["seconds"] < history[0]["epoch_seconds"]
    assert math.isfinite(mid_epoch["loss_sum"])
    assert recorded[1][1]["partial_epoch"] == {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


def test_checkpoint_meta_records_the_run(saves):
    summary, recorded, cfg, _ = saves
    name, meta = recorded[-1]
    assert meta["model"] == "mimic_snn_1k" and meta["config"] == cfg.to_dict()
    assert meta["data"]["name"] == "fashion-mnist" and meta["data"]["num_train"] == 384
    assert meta["run_meta"] == {"purpose": "test"} and meta["nan_steps"] == 0
    assert [row["epoch"] for row in meta["history"]] == [1, 2]
    assert meta["best_top1"] == max(row["eval_top1"] for row in meta["history"])
    assert dt.datetime.fromisoformat(meta["saved_at"]).date() == dt.date.today()
    _, on_disk = read_checkpoint(summary["checkpoint"])
    assert on_disk["step"] == 12 and on_disk["history"] == meta["history"]


def test_summary_names_every_figure_of_the_run(saves):
    summary, recorded, cfg, calls = saves
    history = recorded[-1][1]["history"]
    assert summary["model"] == "mimic_snn_1k" and summary["data"] == "fashion-mnist"
    assert summary["epochs"] == 2 and summary["epochs_planned"] == 2 and summary["steps"] == 12
    assert summary["train_images"] == 384 and summary["eval_split"] == "val"
    assert summary["selection"] == {"split": "val", "val_split": 0.25, "val_images": 128, "metric": "eval_top1",
                                    "chooses": "best.safetensors"}
    assert summary["val_accuracy"] == history[-1]["eval_top1"]
    best = max(history, key=lambda r: r["eval_top1"])
    assert summary["best_epoch"] == best["epoch"] and summary["best_val_accuracy"] == best["eval_top1"]
    assert summary["stopped_by"] is None and summary["interrupted"] is False and summary["nan_steps_skipped"] == 0
    assert summary["test_accuracy"] <= summary["test_top5"] <= 100.0
    assert summary["fused_test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=0.5)
    trained, _ = load_model(summary["checkpoint"])
    assert summary["params"] == summary["fused_params"] == sum(p.numel() for p in trained.parameters())
    assert summary["depth"] == 3  # the SNN: bottleneck, wide layer, classifier
    assert summary["device"] == "cpu" and summary["torch"] == torch.__version__
    assert summary["date"] == dt.date.today().isoformat() and summary["purpose"] == "test"
    assert summary["out"] == cfg.out and summary["checkpoint"] == f"{cfg.out}/last.safetensors"
    assert summary["train_seconds"] >= sum(row["epoch_seconds"] for row in history) > 0
    assert calls == [("depth", (1, 28, 28)),  # measured on the data's images (a model fx cannot trace is run on one)
                     ("curves", {"title": "mimic_snn_1k on fashion-mnist", "eval_label": "val"})]  # names the split


def test_each_epochs_row_is_its_own_figures(saves):
    _, recorded, cfg, _ = saves
    history = recorded[-1][1]["history"]
    for row in history:
        last_step = 6 * row["epoch"] - 1  # the lr of an epoch's row is its last step's
        assert row["lr"] == pytest.approx(lr_at(last_step, 12, 6, cfg))
        assert row["train_images_per_sec"] == pytest.approx(384 / row["epoch_seconds"])
        assert 0.0 <= row["train_top1"] <= 100.0 and row["train_loss"] > 0
        assert 0.0 <= row["eval_top1"] <= row["eval_top5"] <= 100.0
    assert history[1]["train_loss"] < history[0]["train_loss"]  # the synthetic squares are learnt
    with open(f"{cfg.out}/metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
