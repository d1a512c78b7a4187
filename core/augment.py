"""Batch augmentation on the training device.

One affine_grid/grid_sample call warps the whole batch, so augmentation costs a
few percent of a step instead of a per-image PIL pipeline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    shift: float = 2.0  # max translation, pixels
    rotate: float = 10.0  # max rotation, degrees
    scale: float = 0.1  # scale drawn from [1-scale, 1+scale]
    stroke: float = 0.5  # probability of a thickness change (half thicker, half thinner)


def random_affine(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: float [N,1,H,W] in [0,1] -> same shape, each image shifted/rotated/scaled at random."""
    n, _, h, w = x.shape
    dev = x.device

    def u(lo, hi):  # uniform on the CPU generator so CPU and CUDA runs draw the same numbers
        return (torch.rand(n, generator=generator) * (hi - lo) + lo).to(dev)

    angle = u(-cfg.rotate, cfg.rotate) * (math.pi / 180)
    scale = u(1 - cfg.scale, 1 + cfg.scale)
    tx = u(-cfg.shift, cfg.shift) * 2 / w  # affine_grid works in [-1,1] coordinates
    ty = u(-cfg.shift, cfg.shift) * 2 / h
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # [N,2,3]
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def dilate(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


def erode(x: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-x, 3, stride=1, padding=1)


def random_stroke(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Thicken or thin a random fraction p of the batch by a random amount.

    A full 3x3 dilation is a large change on a 28x28 digit, so each image
    blends toward its dilated/eroded version by a random weight in [0,1].
    """
    n = x.shape[0]
    r = torch.rand(n, generator=generator).to(x.device).view(n, 1, 1, 1)
    amount = torch.rand(n, generator=generator).to(x.device).view(n, 1, 1, 1)
    thick = (r < p / 2).to(x.dtype) * amount
    thin = ((r >= p / 2) & (r < p)).to(x.dtype) * amount
    return x + thick * (dilate(x) - x) + thin * (erode(x) - x)


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: float [N,1,28,28] in [0,1]."""
    if cfg.stroke > 0:
        x = random_stroke(x, cfg.stroke, generator)
    return random_affine(x, cfg, generator)
