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


def random_dihedral(images: torch.Tensor) -> torch.Tensor:
    """Each image of the batch in a random one of its 8 dihedral views.

    Drawn in the main process from the global torch RNG, one draw per image in batch order, so the
    augmentation does not depend on the number of loader workers.
    """
    views = torch.randint(8, (len(images),))
    out = torch.empty_like(images)
    for k in views.unique().tolist():
        sel = views == k
        out[sel] = dihedral(images[sel], k)
    return out


def loader(dataset: StoreSites, batch_size: int, workers: int, shuffle: bool = False,
           generator: torch.Generator | None = None) -> DataLoader:
    """Batches of (images, positions, labels), read by ``workers`` processes (0: in this process).

    Without a generator, a fixed private one is used: iterating a DataLoader otherwise draws from the
    global torch RNG, so a validation pass would change the training's augmentations.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      generator=generator, persistent_workers=False, drop_last=False,
                      pin_memory=torch.cuda.is_available())
