"""The trained model's own format: what the catalog saves as ``model.pt``, and the network rebuilt from it."""

from __future__ import annotations

import torch

from rxrx1_pipeline.nn.identity import with_defaults
from rxrx1_pipeline.nn.network import EmbeddingNet, build_network


def model_checkpoint(net: EmbeddingNet, settings: dict, n_classes: int, run_id: str = "") -> dict:
    """The trained model as saved in the catalog: architecture, class count, every setting, weights, and
    the fingerprint of the run that trained it (models fine-tuned from it include it in theirs)."""
    return {"arch": settings["arch"], "n_classes": n_classes, "settings": settings, "run_id": run_id,
            "state_dict": {k: v.cpu() for k, v in net.state_dict().items()}}


def load_model(checkpoint: dict, device: torch.device) -> EmbeddingNet:
    """Rebuild the network of a :func:`model_checkpoint` from its own settings, in eval mode."""
    net = build_network(with_defaults(checkpoint["settings"]), checkpoint["n_classes"], pretrained=False).to(device)
    net.load_state_dict(checkpoint["state_dict"])
    return net.eval()
