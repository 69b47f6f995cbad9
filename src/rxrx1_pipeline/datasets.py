"""Custom Kedro datasets: RxRx1 PNG trees, the decode-once image store, torch checkpoints.

Image datasets load as picklable readers (``images.PngSites``, ``images.ImageStore``), never as
pixels; torch is imported lazily.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io import AbstractDataset
from tqdm.auto import tqdm

from rxrx1_pipeline.images import DecodeJob, ImageStore, PngSites, build_store, write_site


class SiteImagesDataset(AbstractDataset[dict, PngSites]):
    """An RxRx1 PNG tree under ``path``: ``{prefix}_w{1..6}.png`` per site.

    Loads as a :class:`PngSites` reader. Saves ``{prefix: (6, H, W) uint8}``, where values may be
    callables returning arrays, so a generator renders lazily while saving. ``prefix`` is e.g.
    ``train/HEPG2-01/Plate1/B02_s1``.
    """

    def __init__(self, *, path: str, workers: int | None = None, metadata: dict | None = None):
        self._path = Path(path)
        self._workers = workers or min(4, os.cpu_count() or 1)
        self.metadata = metadata

    def load(self) -> PngSites:
        return PngSites(self._path)

    def save(self, data: dict[str, np.ndarray | Callable[[], np.ndarray]]) -> None:
        """Write every site into a staging folder, then swap each top folder (train/, test/) into place,
        so an interrupted save leaves no half-written tree behind."""
        staging = self._path / ".partial"
        shutil.rmtree(staging, ignore_errors=True)

        def write(item):
            prefix, value = item
            write_site(staging, prefix, value() if callable(value) else value)

        with ThreadPoolExecutor(self._workers) as pool:
            for _ in tqdm(pool.map(write, data.items()), total=len(data), desc="writing sites", unit="site",
                          mininterval=1):
                pass
        for top in sorted(staging.iterdir()):
            shutil.rmtree(self._path / top.name, ignore_errors=True)
            top.replace(self._path / top.name)
        staging.rmdir()

    def _exists(self) -> bool:
        return self._path.is_dir() and any(self._path.glob("*/*/*/*_w1.png"))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class _FileDataset(AbstractDataset):
    """A dataset stored in one local file, written atomically (temp file, then rename)."""

    def __init__(self, *, filepath: str, metadata: dict | None = None):
        self._path = Path(filepath)
        self.metadata = metadata

    def _write(self, write: Callable[[Path], None]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        write(tmp)
        tmp.replace(self._path)

    def _exists(self) -> bool:
        return self._path.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path)}


class ImageStoreDataset(AbstractDataset[DecodeJob, ImageStore]):
    """The decode-once image store in folder ``path``: saving a :class:`DecodeJob` builds (or resumes,
    or reuses) it with ``workers`` processes (default: all cores); loading gives an :class:`ImageStore`."""

    def __init__(self, *, path: str, workers: int | None = None, metadata: dict | None = None):
        self._path = Path(path)
        self._workers = workers
        self.metadata = metadata

    def load(self) -> ImageStore:
        return ImageStore(self._path)

    def save(self, data: DecodeJob) -> None:
        build_store(self._path, data, self._workers)

    def _exists(self) -> bool:
        return (self._path / "manifest.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "workers": self._workers}


class TorchCheckpointDataset(_FileDataset):
    """A plain dict of tensors and settings saved with ``torch.save``; loads with ``weights_only``."""

    def load(self) -> dict:
        import torch

        return torch.load(self._path, map_location="cpu", weights_only=True)

    def save(self, data: dict) -> None:
        import torch

        self._write(lambda tmp: torch.save(data, tmp))


class CheckpointStoreDataset(_FileDataset):
    """Hands a training node its ``nn.checkpoints.CheckpointStore`` (loading gives the store, not a state)."""

    def load(self):
        from rxrx1_pipeline.nn.checkpoints import CheckpointStore

        return CheckpointStore(self._path)

    def save(self, data) -> None:
        raise NotImplementedError("the training node writes checkpoints through the loaded CheckpointStore")

    def _exists(self) -> bool:
        return True
