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
    """Each image of the batch cropped to a random square and resized back to full size with nearest-neighbour
    sampling: the 1st place's zoom (``train_transform1``): an edge of randint(round(S x ``min_edge``), S) pixels,
    its corner at randint(0, S - edge) on each axis, resized as OpenCV's ``INTER_NEAREST`` (:func:`zoom_square`).
    1: unchanged."""
    if min_edge >= 1:
        return x
    size = x.shape[-1]
    out = torch.empty_like(x)
    for i in range(len(x)):
        edge = int(torch.randint(round(size * min_edge), size + 1, (1,), generator=generator))
        top, left = (int(torch.randint(0, size - edge + 1, (1,), generator=generator)) for _ in range(2))
        out[i] = zoom_square(x[i], edge, top, left)
    return out


def zoom_square(image: torch.Tensor, edge: int, top: int, left: int) -> torch.Tensor:
    """``image[..., top:top + edge, left:left + edge]`` resized to the image's size by nearest neighbour, with
    OpenCV's ``INTER_NEAREST`` source index: floor(i x (1 / (S / edge))), in double precision."""
    size = image.shape[-1]
    source = np.minimum(np.floor(np.arange(size) * (1.0 / (size / edge))).astype(np.int64), edge - 1)
    rows = torch.from_numpy(source + top).to(image.device)
    cols = torch.from_numpy(source + left).to(image.device)
    return image[..., rows[:, None], cols[None, :]]


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
    """Mixup or CutMix of the batch (one of the two per batch, at random when both are on): returns (mixed
    images, partner position of each image or None, weight ``lam`` of the image's own label). 0 turns a
    method off.

    Mixup blends whole images with the batch reversed, lam ~ Beta(mixup, mixup). CutMix is the 1st place's
    (``transform_input`` of its ``main.py``): lam ~ Beta(cutmix, cutmix), a box of (1 - lam)^0.5 of the
    image's height and width centred on a uniform point of the image and clipped to it (:func:`cutmix_box`),
    filled from a random permutation of the batch; lam is then the share of the area left to the own image
    (an empty box: no mixing, partner None)."""
    methods = [m for m, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha > 0]
    if not methods or len(x) < 2:
        return x, None, 1.0
    method = methods[int(torch.randint(len(methods), (1,), generator=generator))]
    alpha = mixup if method == "mixup" else cutmix
    lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator))).beta(alpha, alpha))
    if method == "mixup":
        partner = torch.arange(len(x) - 1, -1, -1, device=x.device)
        return lam * x + (1 - lam) * x[partner], partner, lam
    partner = torch.randperm(len(x), generator=generator).to(x.device)
    row, column = (float(u) for u in torch.rand(2, generator=generator, dtype=torch.float64))
    return paste_box(x, partner, lam, row * x.shape[-2], column * x.shape[-1])


def cutmix_box(lam: float, row: float, column: float, height: int, width: int) -> tuple[int, int, int, int]:
    """The CutMix box (r1, r2, c1, c2) of a draw ``lam`` centred at (``row``, ``column``) in pixels: edges of
    (1 - lam)^0.5 of the image's, clipped to the image and rounded as the 1st place's ``transform_input``
    (Python's round: halves to even)."""
    box_h, box_w = (1 - lam) ** 0.5 * height, (1 - lam) ** 0.5 * width
    return (round(max(0, row - box_h / 2)), round(min(height, row + box_h / 2)),
            round(max(0, column - box_w / 2)), round(min(width, column + box_w / 2)))


def paste_box(x: torch.Tensor, partner: torch.Tensor, lam: float, row: float, column: float
              ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Each image with the :func:`cutmix_box` of (``lam``, ``row``, ``column``) taken from image ``partner[i]``;
    returns (images, partner, share of the area kept), or (x, None, 1.0) when the box is empty."""
    height, width = x.shape[-2:]
    r1, r2, c1, c2 = cutmix_box(lam, row, column, height, width)
    if not (r1 < r2 and c1 < c2):
        return x, None, 1.0
    out = x.clone()
    out[..., r1:r2, c1:c2] = x[partner][..., r1:r2, c1:c2]
    return out, partner, 1 - (r2 - r1) * (c2 - c1) / (height * width)
