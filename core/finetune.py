"""Fine-tuning as a generator of metric dicts, with an honest from-scratch baseline.

    for ev in finetune(FinetuneConfig(target="inverted", freeze=["block1"]), "runs/fast-1ep", load_mnist()):
        print(ev)     # the CLI prints them, the Fine-tune page charts them

Events, in order:
  start   model, device, target, train/test sizes, trainable/frozen parameter counts, per-group table
  phase   {"phase": "finetune" | "scratch", "total_steps"} before each training run
  eval    {"phase", "step", "target_acc"}: target test accuracy during training (step 0 = before)
  step    core.train.fit's step events, plus "phase"
  epoch   core.train.fit's epoch events, plus "phase"
  done    target_acc_before/after, scratch_target_acc, original_acc_before/after (fractions),
          forgetting, gain_over_scratch, checkpoint, model_obj

Defaults per target come from RECIPES via FinetuneConfig.recommended(target), which
the CLI uses. Freeze names are model.groups keys plus two aliases: "features" (all
but the head, a linear probe) and "upper" (the last feature group and the head).

Freezing a group means requires_grad=False *and* the group runs in eval mode,
so its BatchNorm running statistics (buffers, not parameters) stay as they
were and its dropout is off: the frozen layers compute exactly what they
computed before. The baseline trains the same architecture from a fresh
initialisation on the same target data for the same number of steps, so the
difference is what the pretraining was worth.
"""
from __future__ import annotations

import copy
import math
import time
import types
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import MNISTData
from .device import configure_cpu, device_name, resolve_device
from .models import MNISTModel, ModelConfig, build_model, count_parameters
from .targets import BASE_CLASSES, Target, build_target
from .train import (LIMITS, TrainConfig, check_limits, evaluate_loss_acc, fit, steps_per_epoch, total_steps,
                    warm_up)

FEATURES = "features"  # alias: every group except the head (a linear probe)
UPPER = "upper"  # alias: the last feature group and the head (just the head on a 2-group model)

# Settings that worked best per target on a `fast` base (README "Fine-tuning" has the figures).
# Pixel-level shifts live in the input: retrain the lower layers, keep the upper ones.
# A rotation changes shapes, so every layer trains. New classes need a new head on
# frozen features (a linear probe): the other way round.
RECIPES: dict[str, dict] = {
    "inverted": dict(freeze=[UPPER], lr=3e-3),
    "thick": dict(freeze=[UPPER], lr=3e-3),
    "thin": dict(freeze=[UPPER], lr=3e-3),
    "noisy": dict(freeze=[UPPER], lr=3e-3),
    "rotated": dict(freeze=[], lr=3e-3),
    "new-classes": dict(freeze=[FEATURES], reinit_head=True, head_lr=1e-2),
}

# The training ranges where the fields are the same, so a valid fine-tune config always gives a
# valid TrainConfig; plus the fine-tune's own fields.
FT_LIMITS = {**{k: LIMITS[k] for k in ("lr", "head_lr", "epochs", "max_steps", "batch_size", "weight_decay")},
             "scratch_lr": LIMITS["lr"], "shots": (1, 5000), "eval_every": (1, 1_000_000), "max_test": (10, 1_000_000)}


@dataclass
class FinetuneConfig:
    target: str = "inverted"
    freeze: list[str] = field(default_factory=list)  # group names from model.groups, or "features"
    reinit_head: bool = False
    lr: float = 1e-3  # body (unfrozen non-head groups)
    head_lr: float | None = None  # None: same as lr
    optimizer: str = "adam"
    schedule: str = "constant"
    weight_decay: float = 0.0
    epochs: int | None = None  # None: as many as max_steps needs
    max_steps: int | None = 200  # the step budget, shared with the scratch baseline
    shots: int = 10  # K examples per class (built-in targets and new-classes)
    batch_size: int = 100  # K=10 x 10 classes: every step sees the whole target train set
    augment: bool = False
    seed: int = 0
    device: str = "auto"
    baseline: bool = True  # also train from scratch for the comparison
    scratch_lr: float = 3e-3  # the scratch run's lr (same optimizer, steps, batches, data)
    eval_every: int = 25  # target test accuracy every N steps, for the live chart
    max_test: int | None = None  # cap the target test split (None: all of it)

    @classmethod
    def recommended(cls, target: str = "inverted", **overrides) -> "FinetuneConfig":
        """The target's recipe (RECIPES), then overrides (None values are ignored)."""
        kind = target.partition(":")[0].strip()
        base = {k: (list(v) if isinstance(v, list) else v) for k, v in RECIPES.get(kind, {}).items()}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(target=target, **base)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> "FinetuneConfig":
        check_limits(self, FT_LIMITS, optional=("head_lr", "epochs", "max_steps", "max_test"),
                     whole=("epochs", "max_steps", "shots", "batch_size", "eval_every", "max_test"))
        if self.epochs is None and self.max_steps is None:
            raise ValueError("give epochs, max_steps or both: the step budget must be finite")
        if isinstance(self.freeze, str) or not all(isinstance(g, str) for g in self.freeze):
            raise ValueError(f"freeze must be a list of group names, got {self.freeze!r}")
        return self

    def train_config(self, model: str, per_epoch: int, scratch: bool = False) -> TrainConfig:
        """The core.train recipe for one run (fine-tune or scratch) of this budget."""
        epochs = self.epochs or math.ceil(self.max_steps / per_epoch)
        return TrainConfig(model=model, epochs=epochs, max_steps=self.max_steps, batch_size=self.batch_size,
                           optimizer=self.optimizer, schedule=self.schedule, warmup=0.1,
                           lr=self.scratch_lr if scratch else self.lr,
                           head_lr=None if scratch else self.head_lr, weight_decay=self.weight_decay,
                           augment=self.augment, seed=self.seed, device=self.device, val_size=0,
                           log_every=1).validate()


# ------------------------------------------------------------------ freezing

def resolve_groups(model: MNISTModel, names: list[str] | tuple[str, ...]) -> list[str]:
    """Expand the aliases ('features', 'upper') and check every name against model.groups."""
    available = list(model.groups.keys())
    aliases = {FEATURES: available[:-1], UPPER: available[-2:] if len(available) > 2 else available[-1:]}
    out: list[str] = []
    for name in names:
        name = name.strip()
        if not name or name == "none":
            continue
        for g in aliases.get(name, [name]):
            if g not in available:
                raise ValueError(f"unknown layer group {g!r}; this model has {', '.join(available)} "
                                 f"(or '{FEATURES}' for all but head, '{UPPER}' for {', '.join(aliases[UPPER])})")
            if g not in out:
                out.append(g)
    if len(out) == len(available):
        raise ValueError("every layer group would be frozen: nothing left to train")
    return out


def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    # Replaces .train on a frozen group: model.train() would otherwise put its
    # BatchNorm back into batch statistics and drift the running buffers.
    return nn.Module.train(self, False)


def freeze_groups(model: MNISTModel, names: list[str]) -> list[str]:
    """Freeze the named groups in place (parameters and mode). Returns the resolved names."""
    groups = resolve_groups(model, names)
    for g in groups:
        module = model.groups[g]
        for p in module.parameters():
            p.requires_grad_(False)
        module.train = types.MethodType(_eval_only_train, module)
        nn.Module.train(module, False)
    return groups


def unfreeze_all(model: MNISTModel) -> None:
    """Undo freeze_groups: a plain trainable model again (for saving and reuse)."""
    for module in model.groups.values():
        if "train" in module.__dict__:
            del module.train
    for p in model.parameters():
        p.requires_grad_(True)


def reinit_head(model: MNISTModel, seed: int = 0) -> None:
    torch.manual_seed(seed)
    for m in model.groups["head"].modules():
        if hasattr(m, "reset_parameters") and m is not model.groups["head"]:
            m.reset_parameters()


def group_table(model: MNISTModel, frozen: list[str], cfg: FinetuneConfig) -> list[dict]:
    rows = []
    for name, module in model.groups.items():
        lr = None if name in frozen else (cfg.head_lr if name == "head" and cfg.head_lr is not None else cfg.lr)
        rows.append({"group": name, "params": count_parameters(module), "frozen": name in frozen, "lr": lr})
    return rows


# ---------------------------------------------------------------- the run

def _load_base(base) -> Checkpoint:
    if isinstance(base, Checkpoint):
        return Checkpoint(copy.deepcopy(base.model).cpu(), base.model_config, dict(base.train_config),
                          dict(base.metrics), base.path)
    return load_checkpoint(base, "cpu")


def trained_classes(ckpt: Checkpoint) -> list[int]:
    return list(ckpt.metrics.get("classes") or ckpt.train_config.get("classes") or range(10))


def _run_collecting(model, tcfg, target_dev, tag, every, device, evals: list[dict]):
    """_run's events, passed through, with the "eval" ones also kept in evals for the final score."""
    for ev in _run(model, tcfg, target_dev, tag, every, device):
        if ev["event"] == "eval":
            evals.append(ev)
        yield ev


def _run(model, cfg: TrainConfig, target_dev, phase: str, eval_every: int, device) -> Iterator[dict]:
    tx, ty, vx, vy = target_dev
    yield {"event": "phase", "phase": phase, "total_steps": total_steps(cfg, len(ty))}
    yield {"event": "eval", "phase": phase, "step": 0, "target_acc": evaluate_loss_acc(model, vx, vy)[1]}
    for ev in fit(model, cfg, tx, ty, None, None, device):
        ev["phase"] = phase
        yield ev
        if ev["event"] == "step" and (ev["step"] % eval_every == 0 or ev["step"] == ev["total_steps"]):
            # The generator is paused here, so evaluating cannot disturb a step in flight.
            acc = evaluate_loss_acc(model, vx, vy)[1]
            yield {"event": "eval", "phase": phase, "step": ev["step"], "total_steps": ev["total_steps"],
                   "target_acc": acc}


def _final_acc(model, evals: list[dict], x, y) -> float:
    """Target accuracy after training: the last eval event when it was taken at the end."""
    if evals and evals[-1]["step"] == evals[-1].get("total_steps"):
        return evals[-1]["target_acc"]
    return evaluate_loss_acc(model, x, y)[1]


def finetune(cfg: FinetuneConfig, base_checkpoint, data: MNISTData, run_dir: str | Path | None = None,
             target: Target | None = None) -> Iterator[dict]:
    """Fine-tune a checkpoint (path, run folder or Checkpoint) on cfg.target; see the module docstring.

    With run_dir, the fine-tuned model is saved there as a normal checkpoint (so
    evaluate/export work on it) with the fine-tune config and results recorded.
    target: a prebuilt Target (else built from cfg.target, cfg.shots, cfg.seed).
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        configure_cpu()
    base = _load_base(base_checkpoint)
    if target is None:
        target = build_target(cfg.target, data, shots=cfg.shots, seed=cfg.seed, max_test=cfg.max_test)
    known = trained_classes(base)
    if target.base_classes is not None and sorted(known) != sorted(target.base_classes):
        raise ValueError(f"target {target.spec!r} needs a base pretrained only on digits "
                         f"{','.join(map(str, target.base_classes))}; this checkpoint knows {known}. "
                         "Make one with `python -m core finetune-base --out runs/base-0-4`.")
    model_name = base.model_config.name
    model = base.model
    frozen = freeze_groups(model, list(cfg.freeze))
    n_train = len(target.train_labels)
    per_epoch = steps_per_epoch(n_train, cfg.batch_size)
    tcfg = cfg.train_config(model_name, per_epoch)
    trainable = count_parameters(model, trainable_only=True)
    total_params = count_parameters(model)

    to = (lambda t: t.to(device))
    target_dev = tuple(map(to, (target.train_images, target.train_labels, target.test_images, target.test_labels)))
    orig_x, orig_y = to(target.original_images), to(target.original_labels)
    yield {"event": "start", "model": model_name, "device": device_name(device), "device_type": device.type,
           "target": target.spec, "target_description": target.description, "train_size": n_train,
           "test_size": len(target.test_labels), "train_per_class": target.summary()["train_per_class"],
           "trainable_params": trainable, "frozen_params": total_params - trainable, "params": total_params,
           "frozen_groups": frozen, "groups": group_table(model, frozen, cfg), "config": cfg.to_dict(),
           "base_checkpoint": str(base.path) if base.path else None, "data_source": data.source}

    model.to(device).eval()
    target_before = evaluate_loss_acc(model, target_dev[2], target_dev[3])[1]
    original_before = evaluate_loss_acc(model, orig_x, orig_y)[1]
    if cfg.reinit_head:  # after measuring "before": that is the base model as it was
        reinit_head(model, cfg.seed)
        model.to(device)

    warm_up(model, tcfg, device, min(tcfg.batch_size, n_train))  # GPU start-up is not fine-tuning time
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    ft_evals: list[dict] = []
    yield from _run_collecting(model, tcfg, target_dev, "finetune", cfg.eval_every, device, ft_evals)
    finetune_seconds = time.perf_counter() - t0
    model.eval()
    target_after = _final_acc(model, ft_evals, target_dev[2], target_dev[3])
    original_after = evaluate_loss_acc(model, orig_x, orig_y)[1]
    unfreeze_all(model)
    mnist_test_acc = evaluate_loss_acc(model, data.test_images.to(device), data.test_labels.to(device))[1]

    scratch_acc, scratch_seconds = None, None
    if cfg.baseline:
        torch.manual_seed(cfg.seed)  # same init recipe the base model had; no pretraining
        scratch = build_model(ModelConfig(name=model_name, num_classes=base.model_config.num_classes)).to(device)
        scfg = cfg.train_config(model_name, per_epoch, scratch=True)
        t1 = time.perf_counter()
        sc_evals: list[dict] = []
        yield from _run_collecting(scratch, scfg, target_dev, "scratch", cfg.eval_every, device, sc_evals)
        scratch_seconds = time.perf_counter() - t1
        scratch_acc = _final_acc(scratch, sc_evals, target_dev[2], target_dev[3])
        del scratch

    results = {
        "target": target.spec, "target_description": target.description, "model": model_name,
        "target_acc_before": target_before, "target_acc_after": target_after, "scratch_target_acc": scratch_acc,
        "original_acc_before": original_before, "original_acc_after": original_after,
        "forgetting": original_before - original_after,
        "gain_over_scratch": None if scratch_acc is None else target_after - scratch_acc,
        "train_size": n_train, "test_size": len(target.test_labels), "steps": ft_evals[-1]["step"],
        "trainable_params": trainable, "frozen_params": total_params - trainable, "frozen_groups": frozen,
        "finetune_seconds": finetune_seconds, "scratch_seconds": scratch_seconds,
    }
    checkpoint = None
    if run_dir is not None:
        metrics = {"test_acc": mnist_test_acc, "data_source": data.source, "device": device_name(device),
                   "params": total_params, "classes": sorted(set(known) | set(target.classes)),
                   "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "finetune": results}
        train_config = {**tcfg.to_dict(), "finetune": cfg.to_dict(),
                        "base_checkpoint": str(base.path) if base.path else None}
        checkpoint = str(save_checkpoint(run_dir, model, base.model_config, train_config, metrics))
    yield {"event": "done", **results, "mnist_test_acc": mnist_test_acc, "device": device_name(device),
           "checkpoint": checkpoint, "model_obj": model}


# ------------------------------------------------------ the new-classes base

def pretrain_base(data: MNISTData, classes=BASE_CLASSES, run_dir: str | Path | None = None,
                  cfg: TrainConfig | None = None) -> Iterator[dict]:
    """core.train.train on the digits in `classes` only (the new-classes base).

    The model keeps 10 outputs; the classes are recorded in the checkpoint's
    train config and metrics so finetune can check a base fits its target.
    """
    from .train import train

    classes = sorted({int(c) for c in classes})
    if not classes or not set(classes) <= set(range(10)):
        raise ValueError(f"classes must be digits 0-9, got {classes}")
    keep_tr = torch.isin(data.train_labels, torch.tensor(classes, device=data.train_labels.device))
    keep_te = torch.isin(data.test_labels, torch.tensor(classes, device=data.test_labels.device))
    sub = MNISTData(data.train_images[keep_tr], data.train_labels[keep_tr], data.test_images[keep_te],
                    data.test_labels[keep_te], data.source,
                    f"{data.description}, digits {','.join(map(str, classes))} only")
    cfg = cfg or TrainConfig.preset("fast", augment=True, epochs=2)
    done = None
    # train() writes its own checkpoint without the class list, so write the final one ourselves.
    for ev in train(cfg, sub, run_dir=None):
        if ev["event"] == "done":
            done = ev
            continue
        yield ev
    metrics = {k: v for k, v in done.items() if k not in ("event", "model_obj", "checkpoint")}
    metrics["classes"] = classes
    checkpoint = None
    if run_dir is not None:
        checkpoint = str(save_checkpoint(run_dir, done["model_obj"], ModelConfig(name=cfg.model),
                                         {**cfg.to_dict(), "classes": classes}, metrics))
    yield {**done, "classes": classes, "checkpoint": checkpoint}
