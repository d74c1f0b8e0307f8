"""One readable training loop: data, model, optimizer, then epochs of steps with evaluation, checkpoints and
metrics; finally the fused (reparameterised) model is evaluated too. Runs under torchrun as DDP."""

from __future__ import annotations

import copy
import csv
import dataclasses
import datetime as dt
import functools
import io
import os
import signal
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from .. import measure
from ..checkpoint import load_training_state, save_checkpoint
from ..data import Augment, DataInfo, build_loaders, build_test_loader
from ..errors import NondeepError
from ..hardware import native_cpu_bf16
from ..report import remove_stale_temp_files, write_json, write_text
from ..reparam import reparameterize_model
from ..runlock import RunLock, check_folder_is_ours
from .config import TrainConfig, compile_mode_for
from .ema import ModelEMA
from .evaluate import evaluate
from .optim import build_optimizer, lr_at, skip_if_nonfinite
from .running import REFRESH_SECONDS, RunningSums, Totals
from .preflight import (build_model, check_out_path, check_resume_fits, fit_batches, fitted_config,
                        model_kwargs_for)

METRIC_COLUMNS = ["epoch", "train_loss", "train_top1", "eval_loss", "eval_top1", "eval_top5", "lr",
                  "epoch_seconds", "train_images_per_sec"]


class TrainingDiverged(NondeepError):
    """The loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NondeepError(f"device {name!r} asked for but CUDA is not available: use --device cpu")
    return torch.device(name)


def training_autocast(cfg: TrainConfig, device: torch.device) -> Any:
    """The step's mixed precision: bf16 on CUDA (cfg.amp) or on a CPU with native bf16 (cfg.cpu_bf16); the
    loss is taken in float32 and the weights stay float32 (no loss scaling: bf16 has float32's range)."""
    if device.type == "cuda" and cfg.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cfg.cpu_bf16:
        if not native_cpu_bf16():
            raise NondeepError("--cpu-bf16: this CPU has no native bf16 (AVX512-BF16 or AMX): drop --cpu-bf16")
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to checkpoint at the next step boundary and exit cleanly; a second SIGINT
    (Ctrl-C again) raises KeyboardInterrupt at once (atomic writes keep the last checkpoint whole)."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            kept = (f"the last checkpoint ({self.checkpoint}) is intact: continue with --resume"
                    if self.checkpoint.exists() else "no checkpoint was saved yet")
            raise KeyboardInterrupt(f"at once; {kept}")
        self.signal = signum
        # os.write, not print: the handler may have interrupted a print to stderr (the progress bar)
        os.write(2, f"\nnondeep: {signal.Signals(signum).name}: saving a checkpoint after this step and stopping "
                    f"(Ctrl-C again to quit at once)\n".encode())

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def default_run_dir(cfg: TrainConfig) -> Path:
    data = Path(cfg.data).name if os.path.sep in cfg.data else cfg.data
    return Path("runs") / f"{dt.datetime.now():%Y%m%d-%H%M%S}-{cfg.model}-{data}"


LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]
# (device, rank, world_size) -> (train loader, eval loader, DataInfo): a caller-built data set (distillation)
LoaderFactory = Callable[[torch.device, int, int], "tuple[Iterable, Iterable, DataInfo]"]


def train(cfg: TrainConfig, resume: bool = False, loss_fn: LossFn | None = None,
          run_meta: dict[str, Any] | None = None, loaders: LoaderFactory | None = None,
          force: bool = False) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data`; returns the summary also written to <out>/summary.json.

    loss_fn(logits, labels, sample_indices, images) replaces the label cross-entropy (distillation); when it
    has `needs_indices = True` the loader also yields each sample's training-set index. run_meta (JSON-able)
    is stored in the checkpoints and the summary. loaders(device, rank, world_size), when given, replaces
    build_loaders (distillation's fixed transfer set); cfg's data and augmentation fields are then unused here.
    The run holds a lock on its folder while it writes (a second run into it is refused); force: write into
    an existing folder that holds files nondeep did not write.
    """
    with ExitStack() as held:  # the run folder's lock, released however the run ends
        return _train(cfg, resume, loss_fn, run_meta, loaders, force, held)


def _train(cfg: TrainConfig, resume: bool, loss_fn: LossFn | None, run_meta: dict[str, Any] | None,
           loaders: LoaderFactory | None, force: bool, held: ExitStack) -> dict[str, Any]:
    cfg.validate()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(cfg.device)
    autocast = training_autocast(cfg, device)  # before anything is written: an unsupported option is refused
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    is_main = rank == 0
    if cfg.compile:  # auto resolved here, so config.yaml and the summary name the mode that ran
        mode = compile_mode_for(cfg.compile_mode, device.type, world_size)
        if is_main:
            auto = f" (auto on {device.type})" if cfg.compile_mode == "auto" else ""
            print(f"nondeep: the step is compiled with torch.compile mode {mode}{auto}", flush=True)
        cfg = dataclasses.replace(cfg, compile_mode=mode)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    out = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    last_path, best_path = out / "last.safetensors", out / "best.safetensors"
    if not resume and last_path.exists():
        raise NondeepError(f"{out} already holds a training run: pass --resume to continue it, or choose "
                           f"another --out (nothing was overwritten)")
    if resume and not last_path.exists():
        raise NondeepError(f"--resume: no checkpoint at {last_path}; start without --resume or fix --out")
    check_out_path(out)
    check_folder_is_ours(out, force=force or resume)

    # Data
    if loaders is not None:
        train_loader, eval_loader, info = loaders(device, rank, world_size)
    else:
        augment = Augment(crop_padding=cfg.crop_padding, flip=cfg.flip, cutout=cfg.cutout)
        train_loader, eval_loader, info = build_loaders(
            cfg.data, data_dir=cfg.data_dir, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
            augment=augment, val_split=cfg.val_split, max_train_samples=cfg.max_train_samples, device=device,
            seed=cfg.seed, rank=rank, world_size=world_size, num_workers=cfg.num_workers,
            with_indices=getattr(loss_fn, "needs_indices", False), image_size=cfg.image_size,
            in_chans=cfg.in_chans, fit_batches=functools.partial(fit_batches, cfg, device))
        cfg = fitted_config(cfg, train_loader.batch_size, eval_loader.batch_size)  # lowered if out of memory
    # With a validation split the eval loader is validation, used every epoch and to choose best; the test
    # split is read once, after training. Without one, the eval loader is the test split and nothing is chosen.
    selects = cfg.val_split > 0
    test_loader = (build_test_loader(cfg.data, data_dir=cfg.data_dir, batch_size=cfg.eval_batch_size,
                                     device=device, image_size=info.image_size[0], in_chans=info.in_chans)
                   if selects and is_main else eval_loader)

    # Model, optimizer, EMA
    model_kwargs = model_kwargs_for(cfg, info.num_classes, info.in_chans)
    model = build_model(cfg.model, model_kwargs).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, cfg)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    step, start_epoch, start_batch, history, best_top1 = 0, 0, 0, [], -1.0
    partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    nan_steps = 0
    if resume:
        meta, extra = load_training_state(last_path, model, optimizer, ema, expect=lambda meta: check_resume_fits(
            last_path, meta, cfg, model_kwargs, info))
        step, start_epoch, start_batch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        history, best_top1, nan_steps = meta["history"], meta["best_top1"], meta.get("nan_steps", 0)
        partial = meta["partial_epoch"]
        if "torch_rng" in extra:
            torch.set_rng_state(extra["torch_rng"])
    train_model: nn.Module = model
    if world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model, mode=cfg.compile_mode, dynamic=False)  # a batch size, a graph

    def meta_for_checkpoint(epoch: int, batch_in_epoch: int, epoch_partial: dict[str, float]) -> dict[str, Any]:
        return {"model": cfg.model, "model_kwargs": model_kwargs, "data": dataclasses.asdict(info), "config": cfg.to_dict(),
                "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "history": history,
                "best_top1": best_top1, "partial_epoch": epoch_partial, "nan_steps": nan_steps,
                "run_meta": run_meta or {},
                "saved_at": dt.datetime.now().isoformat(timespec="seconds")}

    def check_finite(totals: Totals, epoch: int, skipped_before: int) -> None:
        """Stop (on_nan stop) at the first non-finite loss, naming its step: read before any checkpoint is
        written, so none holds weights it updated. Under skip, count the steps the device skipped."""
        nonlocal nan_steps
        bad = totals.first_nonfinite_step
        if cfg.on_nan == "skip":
            nan_steps = skipped_before + totals.skipped
        elif bad is not None:
            raise TrainingDiverged(
                f"loss is NaN or infinite at step {bad} (epoch {epoch + 1}, lr "
                f"{lr_at(bad, total_steps, steps_per_epoch, cfg):.4g}); last good checkpoint: "
                f"{last_path if last_path.exists() else 'none'}; lower --lr, add --grad-clip, or pass --on-nan skip")

    def save(path: Path, epoch: int, batch_in_epoch: int, epoch_partial: dict[str, float]) -> None:
        if is_main:
            save_checkpoint(path, model, meta_for_checkpoint(epoch, batch_in_epoch, epoch_partial), optimizer, ema,
                            extra_tensors={"torch_rng": torch.get_rng_state()})

    if is_main:
        held.enter_context(RunLock(out))  # makes the folder; refused while another run writes it
        remove_stale_temp_files(out)  # half-written files of a killed run; the finished ones are untouched
        write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    board = _tensorboard_writer(out) if is_main else None
    train_start = time.perf_counter() - sum(row["epoch_seconds"] for row in history)
    last_save = time.monotonic()
    stopped_by = None
    with _StopRequest(last_path) as stop:
        for epoch in range(start_epoch, cfg.epochs):
            train_loader.set_epoch(epoch, start_batch)
            train_model.train()
            epoch_start = time.perf_counter() - partial["seconds"]
            bar = tqdm(total=steps_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (cfg.progress and is_main), leave=False, dynamic_ncols=True)
            running = RunningSums(device, partial["loss_sum"], partial["correct"], partial["seen"])
            skipped_before = nan_steps  # the sums count this epoch's skipped steps (since a resumed checkpoint)
            next_read = time.monotonic() + REFRESH_SECONDS
            for batch_in_epoch, (x, y, *indices) in enumerate(train_loader, start=start_batch):
                lr = lr_at(step, total_steps, steps_per_epoch, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = x.contiguous(memory_format=memory_format)
                if cfg.compile:  # a new step: CUDA-graph replays (reduce-overhead) may reuse the last one's memory
                    torch.compiler.cudagraph_mark_step_begin()
                with autocast:
                    logits = train_model(x)
                    loss = (loss_fn(logits.float(), y, indices[0] if indices else None, x) if loss_fn else
                            F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                keep = skip_if_nonfinite(optimizer, loss) if cfg.on_nan == "skip" else None  # decided on the device
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(model, keep)
                running.add(loss, logits, y, step, keep=keep)
                step += 1
                bar.update(1)
                due = ((cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0) or
                       (cfg.checkpoint_every_minutes and time.monotonic() - last_save >= 60 * cfg.checkpoint_every_minutes))
                if not (due or stop.signal or time.monotonic() >= next_read):
                    continue
                # the device's sums, read at most every REFRESH_SECONDS and before a checkpoint (one sync)
                totals = running.read()
                check_finite(totals, epoch, skipped_before)
                next_read = time.monotonic() + REFRESH_SECONDS
                elapsed, seen = time.perf_counter() - epoch_start, max(1, totals.seen)  # 0 if all were skipped
                bar.set_postfix(loss=f"{totals.loss_sum / seen:.3f}", acc=f"{100 * totals.correct / seen:.1f}",
                                img_s=f"{totals.seen * world_size / max(elapsed, 1e-9):.0f}", lr=f"{lr:.3g}")
                if (due or stop.signal) and batch_in_epoch + 1 < steps_per_epoch:
                    save(last_path, epoch, batch_in_epoch + 1, totals.partial(elapsed))
                    last_save = time.monotonic()
                if stop.signal:
                    stopped_by = signal.Signals(stop.signal).name
                    break
            bar.close()
            if stopped_by and batch_in_epoch + 1 < steps_per_epoch:
                break
            start_batch = 0
            totals = running.read()
            check_finite(totals, epoch, skipped_before)
            partial = totals.partial(0.0)
            epoch_seconds = time.perf_counter() - epoch_start
            eval_model = ema.module if ema is not None else model
            metrics = evaluate(eval_model, eval_loader, device, cfg.channels_last, cfg.tta_flip) if is_main else {}
            row = {"epoch": epoch + 1, "train_loss": partial["loss_sum"] / max(1, partial["seen"]),
                   "train_top1": 100.0 * partial["correct"] / max(1, partial["seen"]), **metrics, "lr": lr,
                   "epoch_seconds": epoch_seconds,
                   "train_images_per_sec": partial["seen"] * world_size / max(epoch_seconds, 1e-9)}
            history.append(row)
            partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            if is_main:
                _write_metrics(out / "metrics.csv", history)
                if board is not None:
                    for key, value in row.items():
                        if key != "epoch":
                            board.add_scalar(key, value, global_step=row["epoch"])
                    board.flush()
                print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, eval top-1 "
                      f"{row.get('eval_top1', float('nan')):.2f}%, {row['train_images_per_sec']:.0f} img/s", flush=True)
                if row["eval_top1"] > best_top1 or not selects:  # without validation, best = last
                    best_top1 = row["eval_top1"]
                    save(best_path, epoch + 1, 0, partial)
                save(last_path, epoch + 1, 0, partial)
                last_save = time.monotonic()
            if stop.signal:  # also when it came during the evaluation: the epoch's checkpoint is saved
                stopped_by = signal.Signals(stop.signal).name
                break
    if board is not None:
        board.close()
    summary = _finish(cfg, out, model, ema, test_loader, info, device, history, train_start, stopped_by, nan_steps,
                      run_meta, step) if is_main else {}
    if world_size > 1:  # the other ranks wait while rank 0 evaluates and writes the run's files
        dist.barrier()
    return summary


def _tensorboard_writer(out: Path) -> Any:
    """A SummaryWriter into out/tensorboard when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())


def _finish(cfg: TrainConfig, out: Path, model: nn.Module, ema: nn.Module | None, test_loader: Iterable | None,
            info: DataInfo, device: torch.device, history: list[dict[str, Any]], train_start: float,
            stopped_by: str | None, nan_steps: int, run_meta: dict[str, Any] | None, steps: int) -> dict[str, Any]:
    """The test split's one use: the final model, its fused form and the model chosen on validation (best)
    are evaluated on it (not when the run was interrupted: resuming finishes it). Writes summary.json (which
    split chose what) and the training curves."""
    final = ema.module if ema is not None else model
    fused = reparameterize_model(final)
    selects = cfg.val_split > 0
    best_row = max(history, key=lambda r: r["eval_top1"]) if selects and history else (history[-1] if history else None)
    test = fused_test = best_test = None
    if test_loader is not None and not stopped_by:
        test = evaluate(final, test_loader, device, tta_flip=cfg.tta_flip)
        fused_test = evaluate(fused, test_loader, device, tta_flip=cfg.tta_flip)["eval_top1"]
        best_test = test["eval_top1"]
        best_path = out / "best.safetensors"
        if best_row is not None and best_row is not history[-1] and best_path.exists():
            # the chosen epoch's weights in a copy of the trained model (whatever module it is)
            best_model, best_ema = copy.deepcopy(model), copy.deepcopy(ema)
            load_training_state(best_path, best_model, ema=best_ema)
            best_test = evaluate(best_ema.module if best_ema is not None else best_model, test_loader, device,
                                 tta_flip=cfg.tta_flip)["eval_top1"]
    input_size = (info.in_chans, *info.image_size)
    summary = {
        "model": cfg.model, "data": info.name,
        "eval_split": "val" if selects else "test",
        "selection": ({"split": "val", "val_split": cfg.val_split, "val_images": info.num_eval, "metric": "eval_top1",
                       "chooses": "best.safetensors"} if selects else
                      {"split": None, "note": "val_split 0: trained on every training image, nothing selected "
                                              "(best.safetensors = last)"}),
        "epochs": len(history), "epochs_planned": cfg.epochs, "steps": steps, "train_images": info.num_train,
        "stopped_by": stopped_by, "interrupted": stopped_by is not None,
        "val_accuracy": history[-1]["eval_top1"] if selects and history else None,
        "best_epoch": best_row["epoch"] if best_row else None,
        "best_val_accuracy": best_row["eval_top1"] if selects and best_row else None,
        "test_accuracy": test["eval_top1"] if test else None, "fused_test_accuracy": fused_test,
        "test_top5": test["eval_top5"] if test else None, "best_test_accuracy": best_test,
        "params": measure.count_params(final), "fused_params": measure.count_params(fused),
        "depth": measure.depth(model, input_size), "flops": measure.count_flops(fused.cpu(), input_size),
        "train_seconds": time.perf_counter() - train_start, "nan_steps_skipped": nan_steps,
        "device": str(device), "torch": torch.__version__, "date": dt.date.today().isoformat(),
        "config": cfg.to_dict(), "checkpoint": str(out / "last.safetensors"), "out": str(out), **(run_meta or {}),
    }
    write_json(out / "summary.json", summary)
    if history:
        from ..plots import plot_training_curves
        plot_training_curves(history, out / "curves.png", title=f"{cfg.model} on {info.name}",
                             eval_label="val" if selects else "test")
    return summary
