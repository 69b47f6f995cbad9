"""Batch augmentations beyond the dihedral views: zooms, random resized crops, intensity jitter, and
mixup / CutMix of sites.

Every draw comes from the step's generator (the same on every DDP rank), so a step is reproducible
from (seed, epoch) like its dihedral views.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def resized_crop(x: torch.Tensor, min_area: float, generator: torch.Generator) -> torch.Tensor:
    """Each image of the batch cropped to a random rectangle of ``min_area``..1 of its area (aspect ratio
    3/4..4/3, inside the image) and resized back to full size (bilinear). ``min_area`` 1: unchanged."""
    if min_area >= 1:
        return x
    n = len(x)
    area = min_area + (1 - min_area) * torch.rand(n, generator=generator)
    log_ratio = (torch.rand(n, generator=generator) * 2 - 1) * math.log(4 / 3)
    width = (area * log_ratio.exp()).sqrt().clamp(max=1)
    height = (area / log_ratio.exp()).sqrt().clamp(max=1)
    centre_x = (1 - width) * (torch.rand(n, generator=generator) * 2 - 1)
    centre_y = (1 - height) * (torch.rand(n, generator=generator) * 2 - 1)
    return _resample_box(x, width, height, centre_x, centre_y, "bilinear", "reflection")


def zoom(x: torch.Tensor, min_edge: float, generator: torch.Generator) -> torch.Tensor:
    """Each image of the batch cropped to a random square of edge ``min_edge``..1 of its own (inside the image)
    and resized back to full size with nearest-neighbour sampling (the 1st place's zoom). 1: unchanged."""
    if min_edge >= 1:
        return x
    n = len(x)
    edge = min_edge + (1 - min_edge) * torch.rand(n, generator=generator)
    centre_x = (1 - edge) * (torch.rand(n, generator=generator) * 2 - 1)
    centre_y = (1 - edge) * (torch.rand(n, generator=generator) * 2 - 1)
    return _resample_box(x, edge, edge, centre_x, centre_y, "nearest", "border")


def _resample_box(x: torch.Tensor, width: torch.Tensor, height: torch.Tensor, centre_x: torch.Tensor,
                  centre_y: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """Each image's box (width, height and centre as shares of the image, in [-1, 1] coordinates) resampled to
    the full image size."""
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width, centre_x, height, centre_y
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)


def jitter_intensity(x: torch.Tensor, gain_std: float, bias_std: float, generator: torch.Generator) -> torch.Tensor:
    """Each channel of each (normalised) image scaled by a gain ~ N(1, ``gain_std``) and shifted by a bias
    ~ N(0, ``bias_std``), drawn independently (the 1st place's pixel-wise augmentation). 0 and 0: unchanged."""
    if gain_std == 0 and bias_std == 0:
        return x
    shape = (x.shape[0], x.shape[1], 1, 1)
    gain = 1 + gain_std * torch.randn(shape, generator=generator)
    bias = bias_std * torch.randn(shape, generator=generator)
    return x * gain.to(x.device, x.dtype) + bias.to(x.device, x.dtype)


def mix(x: torch.Tensor, mixup: float, cutmix: float, generator: torch.Generator
        ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Mixup or CutMix of the batch with itself reversed (one of the two per batch, at random when both
    are on): returns (mixed images, partner position of each image or None, weight ``lam`` of the
    image's own label). Mixup blends whole images with lam ~ Beta(mixup, mixup); CutMix pastes the
    partner into a random box, lam being the area left of the own image. 0 turns a method off."""
    methods = [m for m, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha > 0]
    if not methods or len(x) < 2:
        return x, None, 1.0
    method = methods[int(torch.randint(len(methods), (1,), generator=generator))]
    alpha = mixup if method == "mixup" else cutmix
    lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator))).beta(alpha, alpha))
    partner = torch.arange(len(x) - 1, -1, -1, device=x.device)
    if method == "mixup":
        return lam * x + (1 - lam) * x[partner], partner, lam
    size = x.shape[-1]
    side = int(round(size * math.sqrt(1 - lam)))
    top, left = (int(torch.randint(size - side + 1, (1,), generator=generator)) for _ in range(2))
    out = x.clone()
    out[..., top:top + side, left:left + side] = x[partner][..., top:top + side, left:left + side]
    return out, partner, 1 - side * side / (size * size)
