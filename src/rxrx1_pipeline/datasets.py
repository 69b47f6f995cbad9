"""Custom Kedro datasets: RxRx1 image trees and torch checkpoints (torch imported lazily)."""

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

from rxrx1_pipeline.plates import CHANNELS


class SiteImagesDataset(AbstractDataset[dict, dict]):
    """An RxRx1 image tree: ``{prefix: (6, H, W) uint8}`` <-> ``{prefix}_w{1..6}.png`` under ``path``.

    ``prefix`` is e.g. ``train/HEPG2-01/Plate1/B02_s1``. Values may be arrays or callables
    returning arrays, so a generator can render lazily while saving. Loading returns lazy callables.
    """

    def __init__(self, *, path: str, workers: int | None = None, metadata: dict | None = None):
        self._path = Path(path)
        self._workers = workers or min(4, os.cpu_count() or 1)
        self.metadata = metadata

    def load(self) -> dict[str, Callable[[], np.ndarray]]:
        prefixes = sorted({str(p.relative_to(self._path))[: -len("_w1.png")]
                           for p in self._path.glob("*/*/*/*_w1.png")})
        return {p: (lambda p=p: read_site(self._path, p)) for p in prefixes}

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


def write_site(root: Path, prefix: str, image: np.ndarray) -> None:
    """Write one site's (6, H, W) uint8 array as six PNGs."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] != len(CHANNELS):
        raise ValueError(f"{prefix}: expected a (6, H, W) uint8 array, got {image.dtype} {image.shape}")
    target = root / PurePosixPath(prefix)
    target.parent.mkdir(parents=True, exist_ok=True)
    for c, channel in zip(CHANNELS, image):
        Image.fromarray(channel).save(f"{target}_w{c}.png", compress_level=1)


def read_site(root: Path, prefix: str, size: int | None = None) -> np.ndarray:
    """Read one site's six PNGs as (6, H, W) uint8, optionally resized to ``size``.

    A missing or unreadable image raises an error naming the file.
    """
    from PIL import Image

    channels = []
    for c in CHANNELS:
        file = root / f"{prefix}_w{c}.png"
        try:
            with Image.open(file) as im:
                im = im.convert("L")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                channels.append(np.asarray(im))
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot read image {file}: {exc}") from exc
    return np.stack(channels)


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


class NpyDataset(_FileDataset):
    """A numpy array in .npy format; loads memory-mapped so large caches stay on disk."""

    def load(self) -> np.ndarray:
        return np.load(self._path, mmap_mode="r")

    def save(self, data: np.ndarray) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, data)

        self._write(write)


class TorchCheckpointDataset(_FileDataset):
    """A plain dict of tensors and settings saved with ``torch.save``; loads with ``weights_only``."""

    def load(self) -> dict:
        import torch

        return torch.load(self._path, map_location="cpu", weights_only=True)

    def save(self, data: dict) -> None:
        import torch

        self._write(lambda tmp: torch.save(data, tmp))


class CheckpointStore:
    """Where a training run keeps its last epoch, so an interrupted run resumes from it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def latest(self) -> dict | None:
        """The last saved training state, or None."""
        return TorchCheckpointDataset(filepath=str(self.path)).load() if self.path.is_file() else None

    def save(self, state: dict) -> None:
        """Atomically replace the last training state."""
        TorchCheckpointDataset(filepath=str(self.path)).save(state)


class CheckpointStoreDataset(_FileDataset):
    """Hands a training node its :class:`CheckpointStore` (loading gives the store, not the state)."""

    def load(self) -> CheckpointStore:
        return CheckpointStore(self._path)

    def save(self, data) -> None:
        raise NotImplementedError("the training node writes checkpoints through the loaded CheckpointStore")

    def _exists(self) -> bool:
        return True
