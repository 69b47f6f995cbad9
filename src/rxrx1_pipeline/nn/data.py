"""Sites of an image store as torch batches, and the dihedral views used for augmentation and TTA."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rxrx1_pipeline.images import ImageStore


class StoreSites(Dataset):
    """Rows of an image store as (image (6, S, S) uint8, position in ``rows``, label or -1)."""

    def __init__(self, store: ImageStore, rows: np.ndarray, labels: np.ndarray | None = None):
        self.store, self.rows, self.labels = store, np.asarray(rows), labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        image = torch.from_numpy(np.array(self.store.read(self.rows[i])))  # a private copy of the mapped pixels
        return image, i, -1 if self.labels is None else int(self.labels[i])


def dihedral(image: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/rotations of the square (k in 0..7) on the last two dims."""
    if k >= 4:
        image = image.transpose(-1, -2)
    return torch.rot90(image, k % 4, dims=(-2, -1))


def random_dihedral(images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Image i of the batch in its dihedral view ``views[i]`` (0..7)."""
    out = torch.empty_like(images)
    for k in views.unique().tolist():
        sel = views == k
        out[sel] = dihedral(images[sel], k)
    return out


def fit_loader(dataset: StoreSites, batch_size: int, workers: int, seed: int, rank: int = 0,
               world: int = 1) -> DataLoader:
    """Shuffled training batches of rank ``rank`` of ``world`` processes: a ``DistributedSampler`` shard.

    ``batch_size`` is the global batch: each process takes ``batch_size / world`` sites per step. The
    sampler draws one permutation per epoch from (seed, epoch) alone (call ``sampler.set_epoch``), and
    rank r's k-th site of a step is position r + k * world of the global batch, so the global batches
    are the same for any number of processes and an epoch is reproduced exactly after a resume.
    """
    from torch.utils.data.distributed import DistributedSampler

    if batch_size % world:
        raise ValueError(f"training.batch_size {batch_size} must divide by the {world} training processes "
                         "(it is the global batch: each process takes batch_size / processes)")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=batch_size // world, sampler=sampler, num_workers=workers,
                      generator=_private(), persistent_workers=False, drop_last=False,
                      pin_memory=torch.cuda.is_available())


def views_of_step(generator: torch.Generator, n_local: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's dihedral views for one step: one view per position of the global batch is drawn
    (the same draws on every rank), and rank r keeps positions r, r + world, ... like its sites."""
    return torch.randint(8, (n_local * world,), generator=generator)[rank::world]


def loader(dataset: StoreSites, batch_size: int, workers: int) -> DataLoader:
    """Batches of (images, positions, labels) in order, read by ``workers`` processes (0: in this process)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, generator=_private(),
                      persistent_workers=False, drop_last=False, pin_memory=torch.cuda.is_available())


def _private() -> torch.Generator:
    """A fixed generator for a DataLoader's worker seeds: without one, every iteration draws from the
    global torch RNG, which a training in a parallel thread may be initialising its weights from."""
    return torch.Generator().manual_seed(0)
