"""A training run's resumable state on disk, and the torch files it and the trained models are saved in
(torch imported when used)."""

from __future__ import annotations

import logging
from pathlib import Path

from rxrx1_pipeline.runs.locks import write_atomically

log = logging.getLogger(__name__)


def load_torch_file(path: Path) -> dict:
    """A plain dict of tensors and settings saved with ``torch.save``, loaded with ``weights_only``."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def save_torch_file(path: Path, data: dict) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    write_atomically(path, lambda tmp: torch.save(data, tmp))


class CheckpointStore:
    """Where a training run keeps its last epoch, so an interrupted run resumes from it: one torch file,
    replaced atomically after each epoch.

    A state belongs to one ``run_id`` (a fingerprint of settings and data); another run's state is
    ignored and then overwritten.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def latest(self) -> dict | None:
        """The last saved training state, or None."""
        return load_torch_file(self.path) if self.path.is_file() else None

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
        return state["epoch"], state["history"], state["extra"]

    def save(self, run_id: str, epoch: int, net, opt, sched, history: list[dict], extra: dict | None = None
             ) -> None:
        """Atomically replace the last training state with the one after ``epoch``."""
        save_torch_file(self.path, {"run_id": run_id, "epoch": epoch, "model": net.state_dict(),
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "history": history, "extra": extra or {}})


class ModelFile:
    """A saved model handed to a node unread (a lazy ``TorchCheckpointDataset``): the node reads it only when
    it needs it, so a cell line trained from scratch runs without the shared model's file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self, why: str) -> dict:
        """The model's dict; ``why`` names the setting that needs it, for the error when the file is missing."""
        if not self.path.is_file():
            raise FileNotFoundError(f"{why} but there is no shared model at {self.path}: train it first "
                                    "(kedro run --pipelines=train, without --namespaces), or set init: scratch")
        return load_torch_file(self.path)
