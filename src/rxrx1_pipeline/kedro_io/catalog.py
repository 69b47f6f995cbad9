"""The project's data catalog: every file a dataset writes lands atomically.

A dataset that writes one local file (``_filepath``, the convention of kedro-datasets and of most
AbstractDataset subclasses) saves to a temporary sibling, which is renamed over the target only
after the save returned. A kill at any moment leaves the old file or the new one, never a part.
Datasets that manage their own files (the project's image stores and PNG trees) and those that write
atomically themselves (``writes_atomically``: the project's single-file datasets) are left alone.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import DataCatalog

from rxrx1_pipeline.runs.locks import sweep_partials, unique_suffix


class AtomicDataCatalog(DataCatalog):
    """A :class:`DataCatalog` whose ``save`` writes through :func:`atomic_target`."""

    def save(self, ds_name: str, data: Any) -> None:
        with atomic_target(self[ds_name]):
            super().save(ds_name, data)


@contextmanager
def atomic_target(dataset) -> Iterator[None]:
    """Point a single-file local dataset at a temporary sibling for the duration of a save, then rename.

    The temporary name carries this process's pid and a random token, so concurrent writers never share one,
    and only the partial files of processes that are gone are swept."""
    target = getattr(dataset, "_filepath", None)
    if (target is None or getattr(dataset, "writes_atomically", False)
            or getattr(dataset, "_protocol", "file") not in ("file", None)
            or getattr(dataset, "_version", None) is not None):
        yield
        return
    final = Path(str(target))
    sweep_partials(final.parent, f".{final.name}.", ".partial")  # left by killed runs; not live processes' ones
    tmp = final.with_name(f".{final.name}.{unique_suffix()}.partial")
    dataset._filepath = PurePosixPath(tmp)
    try:
        yield
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        dataset._filepath = target
