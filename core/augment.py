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
    # Drawing-style distortions, the ones core.robustness measures; off unless asked for, so the
    # default recipe draws exactly the random numbers it always drew.
    elastic: float = 0.0  # probability of a smooth elastic warp
    elastic_alpha: float = 1.5  # its displacement: standard deviation in pixels at the coarse grid
    lowres: float = 0.0  # probability of blur + low resolution (down to lowres_sizes px and back up)
    lowres_sizes: tuple[int, int] = (10, 14)
    heavy_stroke: float = 0.0  # probability of a strong change: two dilations, or an erosion to a hairline

    @classmethod
    def drawing(cls) -> "AugmentConfig":
        """The default, plus the distortions of drawn digits (TrainConfig.drawing_augment)."""
        return cls(rotate=15.0, elastic=0.5, lowres=0.2, heavy_stroke=0.3)


def elastic_field(n: int, h: int, w: int, alpha: float, generator: torch.Generator | None = None,
                  coarse: int = 4) -> torch.Tensor:
    """A smooth random displacement field [N,H,W,2] in grid_sample's [-1,1] units: Gaussian noise on a
    coarse x coarse grid, upsampled bicubically (Simard's smoothed noise, in one interpolate call)."""
    d = torch.randn(n, 2, coarse, coarse, generator=generator) * alpha
    d = F.interpolate(d, size=(h, w), mode="bicubic", align_corners=True)
    d[:, 0] *= 2 / w
    d[:, 1] *= 2 / h
    return d.permute(0, 2, 3, 1)


def random_affine(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: float [N,1,H,W] in [0,1] -> same shape, each image shifted/rotated/scaled at random
    (and, with cfg.elastic, warped by a smooth random field in the same resampling)."""
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
    if cfg.elastic > 0:
        warp = (torch.rand(n, generator=generator) < cfg.elastic).to(x.dtype).view(n, 1, 1, 1)
        grid = grid + (elastic_field(n, h, w, cfg.elastic_alpha, generator) * warp).to(dev, x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_lowres(x: torch.Tensor, p: float, sizes: tuple[int, int] = (10, 14),
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur a random fraction p of the batch the way a low-resolution drawing looks: shrink to
    s x s (one s per batch, drawn from sizes), then scale back up bilinearly."""
    n, _, h, w = x.shape
    pick = torch.rand(n, generator=generator) < p
    s = int(torch.randint(sizes[0], sizes[1] + 1, (1,), generator=generator))
    if not pick.any():
        return x
    idx = pick.nonzero().squeeze(1).to(x.device)
    small = F.interpolate(x.index_select(0, idx), size=(s, s), mode="area")
    big = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    # Back to full brightness, as the canvas preprocessing does with faded strokes.
    big = (big / big.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)).clamp_(0, 1)
    return x.index_copy(0, idx, big)


def random_heavy_stroke(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A strong stroke change on a random fraction p: half get two dilations (a marker pen), half an
    erosion rescaled to full brightness (a hairline, as the canvas preprocessing renormalises
    thin strokes). An erosion that would leave almost no ink keeps the original."""
    n = x.shape[0]
    r = torch.rand(n, generator=generator).to(x.device).view(n, 1, 1, 1)
    thick = dilate(dilate(x))
    thin = erode(x)
    peak = thin.amax(dim=(1, 2, 3), keepdim=True)
    thin = (thin / peak.clamp_min(1e-3)).clamp_(0, 1)
    x = torch.where(r < p / 2, thick, x)
    return torch.where((r >= p / 2) & (r < p) & (peak > 0.3), thin, x)


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
    if cfg.heavy_stroke > 0:
        x = random_heavy_stroke(x, cfg.heavy_stroke, generator)
    x = random_affine(x, cfg, generator)
    if cfg.lowres > 0:
        x = random_lowres(x, cfg.lowres, cfg.lowres_sizes, generator)
    return x
