"""Fine-tuning targets: the data a trained model adapts to.

    target = build_target("inverted", mnist, shots=10)
    target.train_images   # uint8 [100,28,28]: 10 per class, from the MNIST *training* split, transformed
    target.test_images    # uint8 [10000,28,28]: the MNIST *test* split, same transform

Train and test come from different MNIST splits, so they are disjoint by
construction. Every image stays uint8 [N,28,28] (the shift decides the
polarity: `inverted` is black on white), the format `core.train.fit` takes,
so a target is just tensors.

Specs: rotated[:DEG], inverted, thick, thin, noisy[:SIGMA], new-classes,
subset:N, user:DIR (drawings in the core.samples folder format).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# The target names, defaults and spec parsing are plain data in core.config (no torch), so
# the CLI's --help and the server check a spec without importing torch; re-exported here.
from .config import (BASE_CLASSES, DEFAULT_NOISE, DEFAULT_ROTATION, NEW_CLASSES, SHIFTS,  # noqa: F401
                     TARGETS, parse_spec)
from .data import MNISTData


@dataclass
class Target:
    """Everything a fine-tune needs. Images uint8 [N,28,28], labels int64 [N], on the CPU."""

    spec: str
    description: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    # The base model's own task, to measure forgetting: the plain MNIST test set,
    # or its 0-4 part for new-classes (the base never saw 5-9).
    original_images: torch.Tensor
    original_labels: torch.Tensor
    classes: tuple[int, ...] = tuple(range(10))
    base_classes: tuple[int, ...] | None = None  # the base checkpoint must know exactly these
    meta: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"target": self.spec, "description": self.description, "train_size": len(self.train_labels),
                "test_size": len(self.test_labels), "classes": list(self.classes),
                "train_per_class": torch.bincount(self.train_labels, minlength=10).tolist()}


# ------------------------------------------------------------------ transforms

def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [N,1,28,28] in [0,1] -> uint8 [N,28,28]."""
    return x.squeeze(1).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.unsqueeze(1).float().div(255.0)


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """uint8 [N,28,28] rotated counter-clockwise about the centre (bilinear)."""
    x = _as_float(images)
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return _to_uint8(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False))


def invert(images: torch.Tensor) -> torch.Tensor:
    return 255 - images


def thicken(images: torch.Tensor) -> torch.Tensor:
    # 3x3 grey dilation: every stroke grows by one pixel on each side.
    return F.max_pool2d(images.unsqueeze(1).float(), 3, stride=1, padding=1).squeeze(1).to(torch.uint8)


def thin(images: torch.Tensor) -> torch.Tensor:
    # A full 3x3 erosion wipes out MNIST's 2-3 px strokes; a cross-shaped one
    # (min over the 4-neighbourhood) thins them and keeps the digit readable.
    x = images.float()
    p = F.pad(x, (1, 1, 1, 1))
    out = torch.stack([x, p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]]).amin(0)
    return out.to(torch.uint8)


def add_noise(images: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = images.float() / 255.0
    x = x + sigma * torch.randn(x.shape, generator=g)
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


# ------------------------------------------------------------------- sampling

def sample_shots(labels: torch.Tensor, shots: int, classes=tuple(range(10)), seed: int = 0) -> torch.Tensor:
    """Indices of `shots` examples of each class, drawn with a fixed seed (class order kept)."""
    g = torch.Generator().manual_seed(seed)
    y = labels.cpu().numpy()
    out = []
    for c in classes:
        idx = torch.from_numpy(np.flatnonzero(y == c))
        if len(idx) < shots:
            raise ValueError(f"only {len(idx)} examples of digit {c} available, {shots} shots requested")
        out.append(idx[torch.randperm(len(idx), generator=g)[:shots]])
    return torch.cat(out)


def _subsample(n: int, max_n: int | None, seed: int) -> torch.Tensor | None:
    if max_n is None or max_n >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:max_n].sort().values


def shift_images(kind: str, images: torch.Tensor, arg: str | None = None, seed: int = 0) -> torch.Tensor:
    """Apply a built-in distribution shift to uint8 [N,28,28] images (also used for previews)."""
    if kind == "rotated":
        return rotate(images, _number(arg, DEFAULT_ROTATION, "rotated:DEG", -360, 360))
    if kind == "inverted":
        return invert(images)
    if kind == "thick":
        return thicken(images)
    if kind == "thin":
        return thin(images)
    if kind == "noisy":
        return add_noise(images, _number(arg, DEFAULT_NOISE, "noisy:SIGMA", 0, 5), seed)
    raise ValueError(f"{kind!r} is not a built-in shift; choose one of {', '.join(sorted(SHIFTS))}")


def _number(arg: str | None, default: float, form: str, lo: float, hi: float) -> float:
    if arg is None:
        return default
    try:
        v = float(arg)
    except ValueError:
        raise ValueError(f"{form}: {arg!r} is not a number") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{form}: {v:g} is outside [{lo:g}, {hi:g}]")
    return v


def build_target(spec: str, data: MNISTData, shots: int = 10, seed: int = 0,
                 max_test: int | None = None, user_test_fraction: float = 0.3) -> Target:
    """Make a target's train and test splits from MNIST (or a drawings folder).

    shots: K examples per class for the built-in shifts and new-classes (subset:N
    and user:DIR ignore it). max_test caps the test split (random, fixed seed) to
    keep tests and live demos quick; None keeps all of it.
    """
    kind, arg = parse_spec(spec)
    if not isinstance(shots, int) or isinstance(shots, bool) or not 1 <= shots <= 5000:
        raise ValueError(f"shots must be an integer in [1, 5000], got {shots!r}")
    tx_all, ty_all = data.train_images.cpu(), data.train_labels.cpu()
    vx_all, vy_all = data.test_images.cpu(), data.test_labels.cpu()

    if kind in SHIFTS:
        idx = sample_shots(ty_all, shots, seed=seed)
        sub = _subsample(len(vy_all), max_test, seed)
        vx, vy = (vx_all, vy_all) if sub is None else (vx_all[sub], vy_all[sub])
        # Different noise seeds for train and test: the test noise is never seen in training.
        train_x = shift_images(kind, tx_all[idx], arg, seed=seed)
        test_x = shift_images(kind, vx, arg, seed=seed + 10_000)
        desc = TARGETS[kind]
        if kind == "rotated":
            desc = f"every digit rotated by {_number(arg, DEFAULT_ROTATION, '', -360, 360):g} degrees"
        elif kind == "noisy":
            desc = f"Gaussian pixel noise, sigma {_number(arg, DEFAULT_NOISE, '', 0, 5):g} of full ink"
        return Target(spec, f"{desc}; {shots} per class", train_x, ty_all[idx].clone(), test_x, vy.clone(),
                      vx, vy.clone(), meta={"shots": shots})

    if kind == "new-classes":
        idx = sample_shots(ty_all, shots, NEW_CLASSES, seed)
        new_test = torch.isin(vy_all, torch.tensor(NEW_CLASSES))
        tx_idx = torch.nonzero(new_test).flatten()
        ox_idx = torch.nonzero(~new_test).flatten()
        sub = _subsample(len(tx_idx), max_test, seed)
        if sub is not None:
            tx_idx = tx_idx[sub]
        osub = _subsample(len(ox_idx), max_test, seed)
        if osub is not None:
            ox_idx = ox_idx[osub]
        return Target(spec, f"a 0-4 model learns 5-9 from {shots} shots each",
                      tx_all[idx].clone(), ty_all[idx].clone(), vx_all[tx_idx], vy_all[tx_idx],
                      vx_all[ox_idx], vy_all[ox_idx], classes=NEW_CLASSES, base_classes=BASE_CLASSES,
                      meta={"shots": shots})

    if kind == "subset":
        n = int(arg) if arg and arg.isdigit() else -1
        if not 10 <= n <= len(ty_all):
            raise ValueError(f"subset:N needs a whole number of digits in [10, {len(ty_all)}], got {spec!r}")
        idx = torch.randperm(len(ty_all), generator=torch.Generator().manual_seed(seed))[:n]
        sub = _subsample(len(vy_all), max_test, seed)
        vx, vy = (vx_all, vy_all) if sub is None else (vx_all[sub], vy_all[sub])
        return Target(spec, f"{n:,} plain MNIST training digits", tx_all[idx].clone(), ty_all[idx].clone(),
                      vx, vy, vx, vy)

    if kind == "user":
        if not arg:
            raise ValueError("user:DIR needs a folder of labeled drawings, e.g. user:data/samples")
        from .samples import load_folder

        samples = load_folder(Path(arg))
        (tr, te) = samples.split(user_test_fraction, seed=seed)
        if len(tr) == 0 or len(te) == 0:
            raise ValueError(f"user:{arg}: {len(samples)} drawings are too few to split into train and test; "
                             "save at least 2 of some digit")
        sub = _subsample(len(vy_all), max_test, seed)
        vx, vy = (vx_all, vy_all) if sub is None else (vx_all[sub], vy_all[sub])
        trx, try_ = tr.tensors()
        tex, tey = te.tensors()
        present = tuple(sorted(set(try_.tolist())))
        return Target(spec, f"{len(samples)} drawings from {arg} ({len(tr)} train / {len(te)} test)",
                      trx, try_, tex, tey, vx, vy, classes=present,
                      meta={"train_ids": tr.ids(), "test_ids": te.ids()})

    raise ValueError(f"unknown target {spec!r}; choose one of {', '.join(TARGETS)}")
