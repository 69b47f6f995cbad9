"""Torch pieces of the model half: image source, normalisation, embedding network, run fingerprints.

Imported only inside node functions, so that kedro start-up does not pay for torch and timm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rxrx1_pipeline.datasets import read_site
from rxrx1_pipeline.plates import CHANNELS

log = logging.getLogger(__name__)

def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python-side RNGs and return a generator for data order."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    if not torch.cuda.is_available():
        torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


class SiteImages(Dataset):
    """Sites as (6, S, S) uint8 tensors, from the decoded cache when given, else from the PNGs."""

    def __init__(self, sites: pd.DataFrame, data_root: str, size: int, cache: np.ndarray | None = None,
                 labels: np.ndarray | None = None, augment: bool = False):
        self.prefixes = sites["w1"].str.slice(0, -len("_w1.png")).tolist()
        self.rows = sites["cache_row"].to_numpy() if cache is not None and len(cache) else None
        self.cache = cache if self.rows is not None else None
        self.root, self.size = Path(data_root), size
        self.labels = labels
        self.augment = augment

    def __len__(self) -> int:
        return len(self.prefixes)

    def __getitem__(self, i: int):
        if self.cache is not None:
            image = torch.from_numpy(np.ascontiguousarray(self.cache[self.rows[i]]))
        else:
            image = torch.from_numpy(read_site(self.root, self.prefixes[i], self.size))
        if self.augment:
            image = dihedral(image, int(torch.randint(8, (1,))))
        label = -1 if self.labels is None else int(self.labels[i])
        return image, i, label


def dihedral(image: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/rotations of the square (k in 0..7) on the last two dims."""
    if k >= 4:
        image = image.transpose(-1, -2)
    return torch.rot90(image, k % 4, dims=(-2, -1))


def loader(dataset: SiteImages, batch_size: int, workers: int, shuffle: bool = False,
           generator: torch.Generator | None = None) -> DataLoader:
    """Batches of (images, positions, labels); worker processes only when PNGs are decoded.

    Without a generator, a fixed private one is used: iterating a DataLoader otherwise draws from the
    global torch RNG, so a validation pass would change the training's augmentations.
    """
    workers = 0 if dataset.cache is not None else workers
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      generator=generator, persistent_workers=False, drop_last=False,
                      pin_memory=torch.cuda.is_available())


class Normaliser(nn.Module):
    """Per-plate channel standardisation (statistics of each plate's own images) or per-image."""

    def __init__(self, mode: str, plate_mean: np.ndarray | None = None, plate_std: np.ndarray | None = None):
        super().__init__()
        if mode not in ("plate", "image"):
            raise ValueError(f"normalization must be 'plate' or 'image', got {mode!r}")
        self.mode = mode
        self.plate_mean = plate_mean
        self.plate_std = plate_std

    def forward(self, images: torch.Tensor, plate_index: torch.Tensor | None = None) -> torch.Tensor:
        x = images.float()
        if self.mode == "image":
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True)
        else:
            idx = plate_index.cpu().numpy()
            mean = torch.from_numpy(self.plate_mean[idx]).to(x.device)[:, :, None, None]
            std = torch.from_numpy(self.plate_std[idx]).to(x.device)[:, :, None, None]
        return (x - mean) / std.clamp_min(1e-3)


class EmbeddingNet(nn.Module):
    """timm backbone -> embedding (linear + BN) -> margin cosine classifier or softmax."""

    def __init__(self, arch: str, n_classes: int, embedding_dim: int, head: str = "cosface",
                 margin: float = 0.2, scale: float = 30.0, pretrained_weights: str | None = None):
        super().__init__()
        if head not in ("cosface", "arcface", "softmax"):
            raise ValueError(f"head must be cosface, arcface or softmax, got {head!r}")
        self.backbone = timm.create_model(arch, pretrained=False, in_chans=len(CHANNELS), num_classes=0)
        if pretrained_weights:
            load_pretrained(self.backbone, pretrained_weights)
        self.embed = nn.Sequential(nn.Linear(self.backbone.num_features, embedding_dim),
                                   nn.BatchNorm1d(embedding_dim))
        self.weight = nn.Parameter(torch.randn(n_classes, embedding_dim) * 0.01)
        self.bias = nn.Parameter(torch.zeros(n_classes)) if head == "softmax" else None
        self.head, self.margin, self.scale = head, margin, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.backbone(x))

    def logits(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits; with labels (training) the margin is applied to the true class."""
        if self.head == "softmax":
            return F.linear(embedding, self.weight, self.bias)
        cos = F.linear(F.normalize(embedding), F.normalize(self.weight)).clamp(-1 + 1e-6, 1 - 1e-6)
        if labels is None:
            return self.scale * cos
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        if self.head == "cosface":
            target = cos - self.margin
        else:
            target = torch.cos(torch.acos(cos) + self.margin)
        return self.scale * torch.where(onehot, target, cos)


def load_pretrained(backbone: nn.Module, path: str) -> None:
    """Load local weights; a 3-channel first conv is adapted to 6 channels, the classifier is dropped."""
    from timm.models import adapt_input_conv

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"pretrained_weights: no such file {file}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    own = backbone.state_dict()
    adapted = {}
    for key, value in state.items():
        if key not in own:
            continue
        if value.ndim == 4 and value.shape[1] != own[key].shape[1]:
            value = adapt_input_conv(own[key].shape[1], value)
        if value.shape == own[key].shape:
            adapted[key] = value
    missing = backbone.load_state_dict(adapted, strict=False).missing_keys
    log.info("Loaded %d tensors from %s (%d left at init)", len(adapted), file, len(missing))


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-able object (training settings and data)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
