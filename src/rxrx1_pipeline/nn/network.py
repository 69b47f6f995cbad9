"""The embedding network: per-plate (or per-image) input normalisation, a timm backbone, a margin head."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from torch import nn

from rxrx1_pipeline.images import N_CHANNELS, STAT_COLUMNS

log = logging.getLogger(__name__)


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
    """timm backbone -> embedding (linear + BN) -> margin cosine classifier or softmax.

    A model of several cell lines (``n_lines`` > 1) takes the cell line as an input: a learned vector per
    cell line added to the backbone's features. Sites without a given line use ``own_line`` (the one
    cell line a per-cell-line model predicts).
    """

    def __init__(self, arch: str, n_classes: int, embedding_dim: int, head: str = "cosface",
                 margin: float = 0.2, scale: float = 30.0, pretrained_weights: str | None = None,
                 n_lines: int = 1, own_line: int = 0):
        super().__init__()
        if head not in ("cosface", "arcface", "softmax"):
            raise ValueError(f"head must be cosface, arcface or softmax, got {head!r}")
        self.backbone = timm.create_model(arch, pretrained=False, in_chans=N_CHANNELS, num_classes=0)
        if pretrained_weights:
            load_pretrained(self.backbone, pretrained_weights)
        self.embed = nn.Sequential(nn.Linear(self.backbone.num_features, embedding_dim),
                                   nn.BatchNorm1d(embedding_dim))
        self.weight = nn.Parameter(torch.randn(n_classes, embedding_dim) * 0.01)
        self.bias = nn.Parameter(torch.zeros(n_classes)) if head == "softmax" else None
        self.head, self.margin, self.scale = head, margin, scale
        self.line_embedding = nn.Embedding(n_lines, self.backbone.num_features) if n_lines > 1 else None
        if self.line_embedding is not None:
            nn.init.zeros_(self.line_embedding.weight)
        self.own_line = own_line

    channels_last = False  # set by build_network: NHWC convolutions (faster on this CPU: benchmarks/throughput.py)

    def forward(self, x: torch.Tensor, line: torch.Tensor | None = None) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        if self.line_embedding is not None:
            if line is None:
                line = torch.full((len(x),), self.own_line, dtype=torch.long, device=x.device)
            features = features + self.line_embedding(line)
        return self.embed(features)

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


def normaliser_from_stats(mode: str, plate_stats: pd.DataFrame) -> Normaliser:
    """A :class:`Normaliser` over the plates of a ``plate_stats`` table (rows by ``plate_index``)."""
    stats = plate_stats.sort_values("plate_index")
    return Normaliser(mode, stats[STAT_COLUMNS[:N_CHANNELS]].to_numpy(np.float32),
                      stats[STAT_COLUMNS[N_CHANNELS:]].to_numpy(np.float32))


def build_network(settings: dict, n_classes: int, pretrained: bool = True) -> EmbeddingNet:
    """The network a training-settings block describes (local pretrained weights only when asked).

    ``settings["cell_lines"]`` (a model of several cell lines) gives it the cell line as an input;
    ``settings["cell_line"]`` is then the line it predicts by default."""
    lines = settings.get("cell_lines") or []
    own = lines.index(settings["cell_line"]) if settings.get("cell_line") in lines else 0
    net = EmbeddingNet(settings["arch"], n_classes, settings["embedding_dim"], settings["head"],
                       settings["margin"], settings["scale"],
                       settings.get("pretrained_weights") if pretrained else None, len(lines), own)
    if settings.get("channels_last"):
        net.channels_last = True
        net = net.to(memory_format=torch.channels_last)
    return net
