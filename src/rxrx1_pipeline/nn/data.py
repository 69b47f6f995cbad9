"""Sites of an image store as torch batches, and the dihedral views used for augmentation and TTA."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rxrx1_pipeline.storage.images import ImageStore


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


class FitBatches(torch.utils.data.Sampler):
    """The training batches of one epoch, as this rank's positions in the dataset.

    Global batches of ``batch_size`` sites are drawn from (seed, epoch) alone: a permutation of all sites
    (``by_plate`` False), or each plate's sites permuted and cut into batches, the batches shuffled (every
    batch from one plate, so BatchNorm sees one plate's statistics while training: AdaBN at training time).
    An epoch grows with the dataset (pseudo-labelled sites), as the 1st place's; ``steps`` (None: all) would
    cut it at that many batches. Rank r of ``world`` takes positions r, r + world, ... of each global batch (a
    batch that does not split is padded by repeating its first sites), so the global batches are the same for
    any number of processes. A remainder batch that would leave a process one site, on which BatchNorm
    cannot train, is merged into the batch before it (of its plate); alone (a plate of one site) it is dropped.
    """

    def __init__(self, plates: np.ndarray, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 by_plate: bool = False, steps: int | None = None):
        if batch_size % world:
            raise ValueError(f"training.batch_size {batch_size} must divide by the {world} training processes "
                             "(it is the global batch: each process takes batch_size / processes)")
        self.plates, self.batch_size, self.seed = np.asarray(plates), batch_size, seed
        self.rank, self.world, self.by_plate, self.steps = rank, world, by_plate, steps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[np.ndarray]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if not self.by_plate:
            order = torch.randperm(len(self.plates), generator=g).numpy()
            batches = self._cut(order)
        else:
            batches = []
            for plate in np.unique(self.plates):
                mine = np.flatnonzero(self.plates == plate)
                mine = mine[torch.randperm(len(mine), generator=g).numpy()]
                batches += self._cut(mine)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches[:self.steps] if self.steps else batches

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        """``order`` cut into batches of ``batch_size``; a last batch of at most ``world`` sites (one or none
        per process: BatchNorm cannot train on it) merged into the one before, or dropped when alone."""
        batches = np.split(order, range(self.batch_size, len(order), self.batch_size))
        if batches and len(batches[-1]) <= self.world:
            last = batches.pop()
            if batches:
                batches[-1] = np.concatenate([batches[-1], last])
        return batches

    def __iter__(self):
        for batch in self.global_batches():
            if len(batch) % self.world:
                batch = np.resize(batch, -(-len(batch) // self.world) * self.world)
            yield batch[self.rank::self.world].tolist()

    def __len__(self) -> int:
        return len(self.global_batches())


def fit_loader(dataset: StoreSites, plates: np.ndarray, batch_size: int, workers: int, seed: int, rank: int = 0,
               world: int = 1, by_plate: bool = False, steps: int | None = None) -> DataLoader:
    """Shuffled training batches of rank ``rank`` of ``world`` processes (:class:`FitBatches`; call
    ``batch_sampler.set_epoch`` each epoch). ``batch_size`` is the global batch: each process takes
    ``batch_size / world`` sites per step, and an epoch is reproduced exactly after a resume."""
    batches = FitBatches(plates, batch_size, seed, rank, world, by_plate, steps)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, generator=_private(),
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def views_of_step(generator: torch.Generator, n_local: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's dihedral views for one step: one view per position of the global batch is drawn
    (the same draws on every rank), and rank r keeps positions r, r + world, ... like its sites."""
    return torch.randint(8, (n_local * world,), generator=generator)[rank::world]


def loader(dataset: StoreSites, batch_size: int, workers: int) -> DataLoader:
    """Batches of (images, positions, labels) in order, read by ``workers`` processes (0: in this process)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, generator=_private(),
                      persistent_workers=False, drop_last=False, pin_memory=torch.cuda.is_available())


def statistics_batches(n: int, batch_size: int) -> list[list[int]]:
    """Positions 0..n-1 in order, in batches of ``batch_size``; a last batch of one site is merged into the one
    before, since BatchNorm cannot estimate statistics on one sample (a single site alone stays alone)."""
    batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] += last
    return batches


def statistics_loader(dataset: StoreSites, batch_size: int, workers: int) -> DataLoader:
    """:func:`loader` for BatchNorm in training mode (statistics re-estimated): no batch of one site
    (:func:`statistics_batches`)."""
    return DataLoader(dataset, batch_sampler=statistics_batches(len(dataset), batch_size), num_workers=workers,
                      generator=_private(), persistent_workers=False, pin_memory=torch.cuda.is_available())


def _private() -> torch.Generator:
    """A fixed generator for a DataLoader's worker seeds: without one, every iteration draws from the
    global torch RNG, which a training in a parallel thread may be initialising its weights from."""
    return torch.Generator().manual_seed(0)
