"""Training state on disk: the resumable last-epoch checkpoint, and the trained model's own format."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rxrx1_pipeline.datasets import TorchCheckpointDataset
from rxrx1_pipeline.nn.network import EmbeddingNet, build_network

log = logging.getLogger(__name__)


class CheckpointStore:
    """Where a training run keeps its last epoch, so an interrupted run resumes from it.

    A state belongs to one ``run_id`` (a fingerprint of settings and data); another run's state is
    ignored and then overwritten.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = TorchCheckpointDataset(filepath=str(self.path))

    def latest(self) -> dict | None:
        """The last saved training state, or None."""
        return self._file.load() if self.path.is_file() else None

    def restore(self, run_id: str, net, opt, sched, label: str) -> tuple[int, list[dict], dict]:
        """Load the saved state of ``run_id`` into the given objects (the data order and augmentation of
        an epoch follow from the seed and the epoch number, so no random state is kept).

        Returns (epochs done, history rows, the extra state saved with it, e.g. pseudo-labels);
        (0, [], {}) when there is no state of this run.
        """
        state = self.latest()
        if state is None:
            return 0, [], {}
        if state.get("run_id") != run_id:
            log.info("%s: checkpoint belongs to other settings or data; training from scratch", label)
            return 0, [], {}
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        log.info("%s: resuming from the checkpoint after epoch %d", label, state["epoch"])
        return state["epoch"], state["history"], state.get("extra", {})

    def save(self, run_id: str, epoch: int, net, opt, sched, history: list[dict], extra: dict | None = None
             ) -> None:
        """Atomically replace the last training state with the one after ``epoch``."""
        self._file.save({"run_id": run_id, "epoch": epoch, "model": net.state_dict(),
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "history": history, "extra": extra or {}})


def model_checkpoint(net: EmbeddingNet, settings: dict, n_classes: int, run_id: str = "") -> dict:
    """The trained model as saved in the catalog: architecture, class count, every setting, weights, and
    the fingerprint of the run that trained it (models fine-tuned from it include it in theirs)."""
    return {"arch": settings["arch"], "n_classes": n_classes, "settings": settings, "run_id": run_id,
            "state_dict": {k: v.cpu() for k, v in net.state_dict().items()}}


def load_model(checkpoint: dict, device: torch.device) -> EmbeddingNet:
    """Rebuild the network of a :func:`model_checkpoint` from its own settings, in eval mode."""
    net = build_network(checkpoint["settings"], checkpoint["n_classes"], pretrained=False).to(device)
    net.load_state_dict(checkpoint["state_dict"])
    return net.eval()
