"""The embedding network: per-plate (or per-image) input normalisation, a timm backbone, a margin head."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from torch import nn

from rxrx1_pipeline.storage.images import N_CHANNELS, STAT_COLUMNS

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
    """timm backbone -> neck -> embedding -> classifier head.

    ``neck``: ``linear`` (linear + BN) or ``mlp`` (BN, linear, ReLU, BN, linear, BN: the 1st place's). ``head``:
    a margin cosine classifier (``cosface``, ``arcface``), a plain ``softmax``, or ``softmax_arcface``: a softmax
    classifier plus an ArcFace classifier trained beside it (loss weight ``arcface_weight``), inference from the
    softmax one. A model of several cell lines (``n_lines`` > 1) takes the cell line as an input
    (``line_input``): a learned vector per line added to the backbone's features (``embedding``), or the
    line's one-hot code concatenated to them (``one_hot``). Sites without a given line use ``own_line`` (the
    one cell line a per-cell-line model predicts).
    """

    def __init__(self, arch: str, n_classes: int, embedding_dim: int, head: str = "cosface",
                 margin: float = 0.2, scale: float = 30.0, pretrained_weights: str | None = None,
                 n_lines: int = 1, own_line: int = 0, neck: str = "linear", line_input: str = "embedding",
                 arcface_weight: float = 0.2, imagenet: bool = False):
        super().__init__()
        if head not in ("cosface", "arcface", "softmax", "softmax_arcface"):
            raise ValueError(f"head must be cosface, arcface, softmax or softmax_arcface, got {head!r}")
        self.backbone = timm.create_model(arch, pretrained=imagenet, in_chans=N_CHANNELS, num_classes=0)
        if pretrained_weights:
            load_pretrained(self.backbone, pretrained_weights)
        features = self.backbone.num_features
        self.line_input = line_input if n_lines > 1 else None
        self.n_lines, self.own_line = n_lines, own_line
        width = features + (n_lines if self.line_input == "one_hot" else 0)
        if neck == "mlp":
            self.embed = nn.Sequential(nn.BatchNorm1d(width), nn.Linear(width, embedding_dim, bias=False),
                                       nn.ReLU(inplace=True), nn.BatchNorm1d(embedding_dim),
                                       nn.Linear(embedding_dim, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim))
        else:
            self.embed = nn.Sequential(nn.Linear(width, embedding_dim), nn.BatchNorm1d(embedding_dim))
        self.head, self.margin, self.scale, self.arcface_weight = head, margin, scale, arcface_weight
        if head == "softmax_arcface":
            self.classifier = nn.Linear(embedding_dim, n_classes)
            bound = 1 / math.sqrt(embedding_dim)
            self.arc_weight = nn.Parameter(torch.empty(n_classes, embedding_dim).uniform_(-bound, bound))
        else:
            self.weight = nn.Parameter(torch.randn(n_classes, embedding_dim) * 0.01)
            self.bias = nn.Parameter(torch.zeros(n_classes)) if head == "softmax" else None
        # created last, so that the weights above draw the same random numbers with and without it
        self.line_embedding = nn.Embedding(n_lines, features) if self.line_input == "embedding" else None
        if self.line_embedding is not None:
            nn.init.zeros_(self.line_embedding.weight)

    channels_last = False  # set by build_network: NHWC convolutions (faster on this CPU: benchmarks/throughput.py)

    def forward(self, x: torch.Tensor, line: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding of images ``x``; ``line``: each image's cell line as an index, or as a (batch, lines)
        row of weights (the mixed code of a CutMix pair, as the 1st place mixes its cell-type input)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        if self.line_input is not None:
            if line is None:
                line = torch.full((len(x),), self.own_line, dtype=torch.long, device=x.device)
            code = line.to(features.dtype) if line.is_floating_point() else F.one_hot(line, self.n_lines).to(features.dtype)
            if self.line_input == "embedding":
                features = features + code @ self.line_embedding.weight.to(features.dtype)
            else:
                features = torch.cat([features, code], dim=1)
        return self.embed(features)

    def train_loss(self, x: torch.Tensor, labels: torch.Tensor, line: torch.Tensor | None = None,
                   partner: torch.Tensor | None = None, lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(training logits, loss) of a batch. With mixed images (``partner``, ``lam``: :func:`nn.augment.mix`)
        the labels are soft, lam x the own + (1 - lam) x the partner's, and so is the cell-line input (the
        1st place's ``transform_input``)."""
        if partner is not None and line is not None and self.line_input is not None:
            code = F.one_hot(line, self.n_lines).float()
            line = lam * code + (1 - lam) * code[partner]
        target = F.one_hot(labels, self._n_classes()).float()
        if partner is not None:
            target = lam * target + (1 - lam) * target[partner]
        return self.loss(self(x, line), labels, target)

    def _n_classes(self) -> int:
        return (self.classifier.out_features if self.head == "softmax_arcface" else self.weight.shape[0])

    def logits(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (of the softmax classifier for ``softmax_arcface``); with labels (training) the margin
        is applied to the true class. Margin heads are computed in float32 even under autocast."""
        if self.head == "softmax_arcface":
            return self.classifier(embedding)
        if self.head == "softmax":
            return F.linear(embedding, self.weight, self.bias)
        with _float32(embedding):
            cos = _cosines(embedding, self.weight)
            if labels is None:
                return self.scale * cos
            return self.scale * with_margin(cos, F.one_hot(labels, cos.shape[1]).float(), self.head, self.margin)

    def loss(self, embedding: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(training logits, loss) of a batch. ``target``: soft labels (rows summing to 1; default the one-hot
        ``labels``), taken by a dense cross-entropy as the 1st place's ``DenseCrossEntropy``; the margin of a
        margin head goes to each class in proportion to its label weight (its ``ArcFaceLoss``).
        ``softmax_arcface``: (1 - w) x the softmax cross-entropy + w x half the ArcFace cross-entropy
        (w = ``arcface_weight``). Losses and margin heads are computed in float32, also under autocast: a bf16
        cosine rounds 1 - 1e-6 to 1, where the margin's sqrt(1 - cos^2) has no gradient."""
        if target is None:
            target = F.one_hot(labels, self._n_classes()).float()
        with _float32(embedding):
            embedding = embedding.float()
            if self.head == "softmax_arcface":
                logits = self.classifier(embedding)
                loss = dense_cross_entropy(logits, target)
                cos = _cosines(embedding, self.arc_weight)
                arc = dense_cross_entropy(self.scale * with_margin(cos, target, "arcface", self.margin), target)
                return logits, (1 - self.arcface_weight) * loss + self.arcface_weight * arc / 2
            if self.head == "softmax":
                logits = F.linear(embedding, self.weight, self.bias)
                return logits, dense_cross_entropy(logits, target)
            cos = _cosines(embedding, self.weight)
            logits = self.scale * with_margin(cos, F.one_hot(labels, cos.shape[1]).float(), self.head, self.margin)
            return logits, dense_cross_entropy(self.scale * with_margin(cos, target, self.head, self.margin), target)


def _float32(tensor: torch.Tensor):
    """A context where autocast is off on ``tensor``'s device (float32 maths under mixed precision)."""
    return torch.autocast(tensor.device.type, enabled=False)


def _cosines(embedding: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cosines between each embedding and each class weight, in float32, kept inside (-1, 1)."""
    return F.linear(F.normalize(embedding.float()), F.normalize(weight.float())).clamp(-1 + 1e-6, 1 - 1e-6)


def dense_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean over rows of -sum(target x log_softmax(logits)): cross-entropy with soft labels."""
    return -(F.log_softmax(logits.float(), dim=1) * target).sum(1).mean()


def with_margin(cos: torch.Tensor, target: torch.Tensor, kind: str, margin: float) -> torch.Tensor:
    """Cosines with the margin applied in proportion to ``target`` (one-hot or soft labels, (rows, classes);
    class indices are taken as one-hot): target x margined + (1 - target) x cos, the margined cosine being
    cos - m (cosface) or cos(theta + m) (arcface; where theta + m would pass pi, cos - m sin(m) m instead, so
    the target stays monotonic in theta), as the 1st place's ``ArcFaceLoss``."""
    if not target.is_floating_point():
        target = F.one_hot(target, cos.shape[1]).to(cos.dtype)
    if kind == "cosface":
        margined = cos - margin
    else:
        sine = (1 - cos * cos).clamp_min(0).sqrt()
        phi = cos * math.cos(margin) - sine * math.sin(margin)
        margined = torch.where(cos > math.cos(math.pi - margin), phi, cos - math.sin(math.pi - margin) * margin)
    return target * margined + (1 - target) * cos


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


def fetch_imagenet_weights(arch: str, block: str) -> None:
    """Make sure timm's ImageNet weights of ``arch`` are in the local cache (timm downloads them once, by
    name); where that is impossible (no network, unknown weights), fail naming ``block``'s two settings."""
    try:
        timm.create_model(arch, pretrained=True)
    except Exception as exc:  # timm and huggingface_hub raise many kinds: offline, HTTP, missing weights
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(
            f"{block}.pretrained = 'imagenet': timm could not get the ImageNet weights of {arch} ({reason}). "
            f"Nothing was run. Without internet, copy the weights file to this machine and set "
            f"{block}.pretrained: none and {block}.pretrained_weights: <path of the file>") from None


def normaliser_from_stats(mode: str, plate_stats: pd.DataFrame) -> Normaliser:
    """A :class:`Normaliser` over the plates of a ``plate_stats`` table (rows by ``plate_index``)."""
    stats = plate_stats.sort_values("plate_index")
    return Normaliser(mode, stats[STAT_COLUMNS[:N_CHANNELS]].to_numpy(np.float32),
                      stats[STAT_COLUMNS[N_CHANNELS:]].to_numpy(np.float32))


def build_network(settings: dict, n_classes: int, pretrained: bool = True) -> EmbeddingNet:
    """The network a model's settings describe (``nn.identity.model_settings``). ``pretrained`` False skips
    the starting weights (``pretrained: imagenet`` from timm, or ``pretrained_weights``), e.g. when a
    checkpoint's own weights are loaded next.

    ``settings["cell_lines"]`` (a model of several cell lines) gives it the cell line as an input;
    ``settings["cell_line"]`` is then the line it predicts by default."""
    lines = settings.get("cell_lines", [])  # only a model of several cell lines has them
    own = lines.index(settings["cell_line"]) if settings.get("cell_line") in lines else 0
    net = EmbeddingNet(settings["arch"], n_classes, settings["embedding_dim"], settings["head"],
                       settings["margin"], settings["scale"], settings["pretrained_weights"] if pretrained else None,
                       len(lines), own, settings["neck"], settings["line_input"], settings["arcface_weight"],
                       imagenet=pretrained and settings["pretrained"] == "imagenet")
    for layer in net.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = settings["batchnorm_momentum"]
    if settings["channels_last"]:
        net.channels_last = True
        net = net.to(memory_format=torch.channels_last)
    return net
