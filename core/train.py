"""Training as a generator of metric dicts.

    for event in train(TrainConfig(model="fast"), load_mnist()):
        print(event)          # the CLI prints them, the Train page draws them

Stopping early is just leaving the loop: the last checkpoint written at an
epoch end stays as it was.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import AugmentConfig, augment
# The configuration lives in config.py (no torch: the web server validates jobs with it);
# train.py re-exports it so `from core.train import TrainConfig` keeps working.
from .config import (LIMITS, MIN_DEFAULT_STEPS, OPTIMIZERS, PRESETS, SCHEDULES, TrainConfig, check_limits,
                     default_epochs, steps_per_epoch, total_steps)
from .checkpoint import save_checkpoint
from .data import MNISTData, split_validation, to_float
from .device import configure_cpu, device_name, resolve_device
from .models import MNISTModel, ModelConfig, build_model, count_parameters

__all__ = ["LIMITS", "MIN_DEFAULT_STEPS", "OPTIMIZERS", "PRESETS", "SCHEDULES", "TrainConfig", "check_limits",
           "default_epochs", "steps_per_epoch", "total_steps", "TrainingDiverged", "TrainingOutOfMemory",
           "check_memory", "warm_up", "fit", "train", "lr_factor", "evaluate_loss_acc"]

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Loss became NaN or inf. .checkpoint is the last good checkpoint, or None."""

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


class TrainingOutOfMemory(RuntimeError):
    """A training step did not fit in the device's memory. .checkpoint is the last good one, or None."""

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    msg = str(e).lower()  # the CPU allocator raises a plain RuntimeError
    return isinstance(e, (RuntimeError, MemoryError)) and (
        isinstance(e, MemoryError) or "out of memory" in msg or "can't allocate memory" in msg
        or "not enough memory" in msg)


def oom_message(device: torch.device, batch_size: int) -> str:
    smaller = max(1, batch_size // 2)
    where = "the GPU" if device.type == "cuda" else "this machine"
    fix = f"try a smaller batch size ({smaller} or less)"
    if device.type == "cuda":
        fix += " or train on the CPU (device: cpu)"
    return f"out of memory on {where} with batch size {batch_size}: {fix}."


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a training step may still use on device, or None when unknown."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except Exception:  # noqa: BLE001 - no driver answer: don't guess
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def step_memory_bytes(model: nn.Module, batch_size: int) -> int:
    """Rough peak memory of one training step: activations kept for backward (every
    module's output, measured on a 1-image forward pass, x3 for saved inputs and their
    gradients) times the batch, plus weights, gradients and two optimizer states."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel() * o.element_size())
                                     if isinstance(o, torch.Tensor) else None)
             for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, 28, 28, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return 3 * sum(sizes) * batch_size + 4 * params


def check_memory(model: nn.Module, cfg: "TrainConfig", device: torch.device,
                 free: int | None = None) -> None:
    """Refuse, before any work starts, a batch whose step cannot fit in free memory."""
    free = free_memory_bytes(device) if free is None else free
    if free is None:
        return
    need = step_memory_bytes(model, cfg.batch_size)
    budget = int(free * 0.8)  # leave room for the data, the allocator and everyone else
    if need > budget:
        per_image = max(1, (need - step_memory_bytes(model, 0)) // max(1, cfg.batch_size))
        fit = max(1, (budget - step_memory_bytes(model, 0)) // per_image)
        raise ValueError(f"batch_size {cfg.batch_size} needs about {need / 2**30:.1f} GB per step but only "
                         f"{free / 2**30:.1f} GB is free on {device.type}; batch_size must be in [1, {fit}] here")


WARMUP_FLOOR_STEPS = 50  # BatchNorm nets blow up if a high lr arrives within a few steps


def lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """Multiplier on the base lr at a step (0-based)."""
    if schedule == "constant":
        return 1.0
    t = step / max(1, total)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    # onecycle: linear warmup to 1, then linear decay to ~0 (cifar10-airbench style).
    # Short demo runs (max_steps of a few dozen) still warm up for half their length:
    # measured on fast, 60 steps: 72% test accuracy with a 12-step warmup, 96% with 30.
    w = max(warmup, min(0.5, WARMUP_FLOOR_STEPS / max(1, total)), 1e-8)
    return t / w if t < w else max(0.0, (1 - t) / (1 - w))


def make_optimizer(cfg: TrainConfig, model: MNISTModel) -> torch.optim.Optimizer:
    """One param group per layer group (only trainable ones), so per-group lrs
    apply and the optimizer never touches frozen weights."""
    groups = []
    for name, module in model.groups.items():
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            continue
        lr = cfg.head_lr if (name == "head" and cfg.head_lr is not None) else cfg.lr
        # No weight decay on BatchNorm and bias vectors, as usual.
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd, "group": name})
    if not groups:
        raise ValueError("every layer group is frozen: nothing to train")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


@torch.no_grad()
def evaluate_loss_acc(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int = 2000) -> tuple[float, float]:
    """images uint8 [N,28,28] on the model's device -> (mean loss, accuracy in [0,1])."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, device=images.device)  # [loss sum, correct], read back once at the end
    for i in range(0, len(labels), batch_size):
        logits = model(to_float(images[i:i + batch_size])).float()
        y = labels[i:i + batch_size]
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = max(1, len(labels))
    total_loss, correct = sums.tolist()
    return total_loss / n, correct / n


_WARM_DEVICES: set[str] = set()  # devices this process has already warmed up


def warm_up(model: nn.Module, cfg: TrainConfig, device: torch.device, batch: int) -> float:
    """One throwaway training step and one evaluation batch on a copy of the model, once per
    process and GPU; returns its seconds (0 on the CPU, where there is nothing to start, and
    on a GPU already warmed).

    The first CUDA work in a process pays for the context, cuBLAS/cuDNN handles and the
    loading of each kernel on first use: on an H100 the first run of the fast recipe spent
    7.4 s before its first step, and its 429 steps then took about 2 s. That is a once-per-
    process cost, not training, so it is paid here and reported as warmup_seconds, outside
    train_seconds. A forward+backward alone took 0.8 s and left most of the delay in the
    first real step, so this runs the loop's whole step (augmentation when on, loss,
    backward, optimizer, a loss sync) and an evaluation batch. A copy, so the real model's weights,
    BatchNorm statistics and gradients stay untouched.
    """
    if device.type != "cuda" or str(device) in _WARM_DEVICES:
        return 0.0
    import copy

    t0 = time.perf_counter()
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    m = copy.deepcopy(model).to(device=device, memory_format=fmt).train()
    opt = make_optimizer(cfg, m)
    x = torch.zeros(batch, 1, 28, 28, device=device)
    if cfg.augment:
        x = augment(x, AugmentConfig(), torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=fmt)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    loss = F.cross_entropy(m(x), y, label_smoothing=cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    loss.item()
    evaluate_loss_acc(m, torch.zeros(min(2000, batch * 4), 28, 28, dtype=torch.uint8, device=device),
                      torch.zeros(min(2000, batch * 4), dtype=torch.long, device=device))
    torch.cuda.synchronize(device)
    del m, opt, x, y, loss
    _WARM_DEVICES.add(str(device))
    return time.perf_counter() - t0


def fit(model: MNISTModel, cfg: TrainConfig, train_x: torch.Tensor, train_y: torch.Tensor,
        val_x: torch.Tensor | None, val_y: torch.Tensor | None, device: torch.device) -> Iterator[dict]:
    """The training loop. Data are uint8 [N,28,28] / int64 [N] already on `device`.

    Yields {"event": "step", ...} every cfg.log_every steps and {"event": "epoch", ...}
    after each epoch (and after a max_steps stop mid-epoch). Raises TrainingDiverged,
    and TrainingOutOfMemory (with what to change) when a step does not fit in memory.
    """
    try:
        yield from _fit(model, cfg, train_x, train_y, val_x, val_y, device)
    except Exception as e:
        if not _is_oom(e):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()  # give the failed step's blocks back for the next attempt
        raise TrainingOutOfMemory(oom_message(device, min(cfg.batch_size, len(train_y)))) from e


def _fit(model: MNISTModel, cfg: TrainConfig, train_x: torch.Tensor, train_y: torch.Tensor,
         val_x: torch.Tensor | None, val_y: torch.Tensor | None, device: torch.device) -> Iterator[dict]:
    n = len(train_y)
    bs = min(cfg.batch_size, n)
    per_epoch, total = steps_per_epoch(n, bs), total_steps(cfg, n)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format).train()
    opt = make_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(cfg.seed)  # CPU generator: identical draws on any device
    aug_cfg = AugmentConfig.drawing() if cfg.drawing_augment else AugmentConfig()

    step = 0
    t0 = time.perf_counter()
    t_log, step_log = t0, 0
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for i in range(per_epoch):
            if step >= total:
                break
            f = lr_factor(step, total, cfg.schedule, cfg.warmup)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
            idx = perm[i * bs:(i + 1) * bs]
            x = to_float(train_x[idx])  # [B,1,28,28] float in [0,1]
            y = train_y[idx]
            if cfg.augment:
                x = augment(x, aug_cfg, gen)
            x = x.contiguous(memory_format=memory_format)
            # fp32 on every device. bf16 autocast was measured on an H100 and lost: 1.57-1.77 s per
            # epoch of `fast` against 1.27-1.61 s in fp32, same accuracy. These models are too small
            # for tensor cores to matter; the per-step weight casts (8,000 per epoch) cost more.
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if step % cfg.log_every == 0 or step == total:
                # One device->host read for both numbers: each read waits for the GPU.
                loss_v, n_correct = torch.stack([loss.detach(), correct.to(loss.dtype)]).tolist()
                if not math.isfinite(loss_v):
                    raise TrainingDiverged(
                        f"training diverged: loss became {loss_v} at step {step} (epoch {epoch}). "
                        f"The learning rate ({cfg.lr:g}) is probably too high; try a smaller one.")
                now = time.perf_counter()
                # train_acc: running accuracy over this epoch so far (for live charts).
                yield {"event": "step", "step": step, "total_steps": total, "epoch": epoch,
                       "loss": loss_v, "train_acc": n_correct / max(seen, 1), "lr": opt.param_groups[0]["lr"],
                       "images_per_sec": (step - step_log) * bs / max(now - t_log, 1e-9),
                       "elapsed": now - t0}
                t_log, step_log = now, step
        if seen == 0:
            break
        train_loss = (loss_sum / seen).item()
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training diverged: mean loss {train_loss} in epoch {epoch}; "
                                   f"try a smaller learning rate than {cfg.lr:g}.")
        ev = {"event": "epoch", "epoch": epoch, "step": step, "total_steps": total,
              "train_loss": train_loss, "train_acc": correct.item() / seen}
        if val_x is not None and len(val_y):
            ev["val_loss"], ev["val_acc"] = evaluate_loss_acc(model, val_x, val_y)
        ev["elapsed"] = time.perf_counter() - t0
        yield ev
        if step >= total:
            break


def train(cfg: TrainConfig, data: MNISTData, run_dir: str | Path | None = None,
          model: MNISTModel | None = None) -> Iterator[dict]:
    """Train cfg.model on data. Events: start, step..., epoch..., done.

    With run_dir, a checkpoint is written atomically after every epoch, so a
    stop or a divergence leaves the last completed epoch on disk.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        configure_cpu()
    torch.manual_seed(cfg.seed)
    model_config = ModelConfig(name=cfg.model)
    model = model if model is not None else build_model(model_config)

    tx, ty, vx, vy = split_validation(data.train_images, data.train_labels, cfg.val_size, seed=cfg.seed)
    # Move data once; every batch after this is an index into device memory.
    tx, ty, vx, vy = (t.to(device) for t in (tx, ty, vx, vy))
    n_params = count_parameters(model)
    check_memory(model, cfg, device)
    log.info("training %s on %s: %d train / %d val digits, batch %d, lr %g", cfg.model, device_name(device),
             len(ty), len(vy), cfg.batch_size, cfg.lr)
    yield {"event": "start", "device": device_name(device), "device_type": device.type, "model": cfg.model,
           "params": n_params, "train_size": len(ty), "val_size": len(vy), "data_source": data.source,
           "config": cfg.to_dict()}

    checkpoint = None
    metrics: dict = {}
    warmup_seconds = warm_up(model, cfg, device, min(cfg.batch_size, len(ty)))
    t0 = time.perf_counter()
    try:
        for ev in fit(model, cfg, tx, ty, vx, vy, device):
            if ev["event"] == "epoch":
                metrics = {k: ev[k] for k in ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc")
                           if k in ev}
                metrics["train_seconds"] = time.perf_counter() - t0
                if run_dir is not None:
                    checkpoint = str(save_checkpoint(run_dir, model, model_config, cfg.to_dict(),
                                                     {**metrics, "data_source": data.source}))
                    ev["checkpoint"] = checkpoint
            yield ev
    except (TrainingDiverged, TrainingOutOfMemory) as e:
        kept = f" The last good checkpoint is kept: {checkpoint}." if checkpoint else \
            " No epoch had finished, so no checkpoint was written."
        log.warning("%s%s", e, kept)
        raise type(e)(str(e) + kept, checkpoint) from None
    train_seconds = time.perf_counter() - t0

    test_x, test_y = data.test_images.to(device), data.test_labels.to(device)
    test_loss, test_acc = evaluate_loss_acc(model, test_x, test_y)
    metrics.update(train_seconds=train_seconds, warmup_seconds=warmup_seconds, test_loss=test_loss, test_acc=test_acc,
                   data_source=data.source, params=n_params, device=device_name(device),
                   trained_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if run_dir is not None:
        checkpoint = str(save_checkpoint(run_dir, model, model_config, cfg.to_dict(), metrics))
    log.info("trained %s: test accuracy %.4f in %.1f s", cfg.model, test_acc, train_seconds)
    yield {"event": "done", **metrics, "checkpoint": checkpoint, "model_obj": model}
