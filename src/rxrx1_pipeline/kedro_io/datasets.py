"""Custom Kedro datasets: RxRx1 metadata in either layout, PNG trees, the decode-once image store, torch
checkpoints.

Image datasets load as picklable readers (``images.PngSites``, ``images.ImageStore``), never as
pixels; torch is imported lazily.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets.pandas import CSVDataset, ParquetDataset
from tqdm.auto import tqdm

from rxrx1_pipeline.runs.locks import sweep_partials, unique_suffix, write_atomically
from rxrx1_pipeline.storage.checkpoints import CheckpointStore, ModelFile, load_torch_file, save_torch_file
from rxrx1_pipeline.storage.downloads import (
    KAGGLE_FILES,
    RELEASE,
    RELEASE_FILE,
    Download,
    DownloadError,
    detect_layout,
    kaggle_to_release,
    read_download,
)
from rxrx1_pipeline.storage.images import (
    CHUNK,
    DecodeJob,
    ImageStore,
    PngSites,
    build_store,
    open_store,
    write_site,
)

log = logging.getLogger(__name__)


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
        so an interrupted save leaves no half-written tree behind. The staging folder is this process's own
        (``.partial-<pid>.<token>``); those of killed runs are removed, those of live processes left alone."""
        sweep_partials(self._path, ".partial-", "")
        staging = self._path / f".partial-{unique_suffix()}"

        def write(item):
            prefix, value = item
            write_site(staging, prefix, value() if callable(value) else value)

        try:
            with ThreadPoolExecutor(self._workers) as pool:
                # a bar on a terminal; in a log (no terminal), a line at every tenth of the sites
                tenth = max(1, len(data) // 10)
                for done, _ in enumerate(tqdm(pool.map(write, data.items()), total=len(data), desc="writing sites",
                                              unit="site", mininterval=1, disable=None), start=1):
                    if done % tenth == 0 and not sys.stderr.isatty():
                        log.info("writing sites: %d of %d (%.0f%%)", done, len(data), 100 * done / len(data))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for top in sorted(staging.iterdir()):
            shutil.rmtree(self._path / top.name, ignore_errors=True)
            top.replace(self._path / top.name)
        staging.rmdir()

    def _exists(self) -> bool:
        return self._path.is_dir() and any(any(self._path.glob(pattern))  # Kaggle {split}/..., release images/...
                                           for pattern in ("*/*/Plate*/*_w1.png", "images/*/*/Plate*/*_w1.png"))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class RawMetadataDataset(AbstractDataset[Download, Download]):
    """The metadata of an RxRx1 folder under ``path``, in either layout (``storage.downloads``): loads as a
    :class:`Download`. Saving one writes its layout's files (each atomically) and removes the other layout's,
    so a folder never holds both."""

    def __init__(self, *, path: str, metadata: dict | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> Download:
        return read_download(self._path)

    def save(self, data: Download) -> None:
        files = ({RELEASE_FILE: kaggle_to_release(data.tables, data.test_labels)} if data.layout == RELEASE
                 else data.tables)
        for name in (*KAGGLE_FILES, RELEASE_FILE):
            if name not in files:
                (self._path / name).unlink(missing_ok=True)
        for name, table in files.items():
            write_atomically(self._path / name, lambda tmp, table=table: table.to_csv(tmp, index=False))

    def _exists(self) -> bool:
        try:
            detect_layout(self._path)
        except DownloadError:
            return False
        return True

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class _FileDataset(AbstractDataset):
    """A dataset stored in one local file, written atomically (temp file, then rename). The file is
    ``_filepath``, the attribute kedro-datasets use, where kedro-mlflow finds the scoring model's artefacts
    (``pipelines/score``)."""

    writes_atomically = True  # the catalog's atomic saves leave it alone (catalog.py)

    def __init__(self, *, filepath: str, metadata: dict | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    @property
    def _path(self) -> Path:
        return Path(self._filepath)  # kedro-mlflow sets it to the artefact's path when it loads the model

    def _exists(self) -> bool:
        return self._path.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path)}


class ImageStoreDataset(AbstractDataset[DecodeJob, ImageStore]):
    """The decode-once image store in folder ``path``: saving a :class:`DecodeJob` builds (or resumes,
    or reuses) it with ``workers`` processes (default: all cores) in tasks of ``chunk`` sites (the unit
    of resumption); loading gives an :class:`ImageStore`, or a :class:`PngStore` (same interface, pixels
    decoded from the PNGs on every read) when the job's ``pixels`` is "png"."""

    def __init__(self, *, path: str, workers: int | None = None, chunk: int = CHUNK, metadata: dict | None = None):
        self._path = Path(path)
        self._workers = workers
        self._chunk = chunk
        self.metadata = metadata

    def load(self) -> ImageStore:
        return open_store(self._path)

    def save(self, data: DecodeJob) -> None:
        build_store(self._path, data, self._workers, self._chunk)

    def _exists(self) -> bool:
        return (self._path / "manifest.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "workers": self._workers, "chunk": self._chunk}


class TorchCheckpointDataset(_FileDataset):
    """A plain dict of tensors and settings saved with ``torch.save``; loads with ``weights_only``. ``lazy``: loads
    as a :class:`ModelFile` that the node reads only if it needs it (the shared model, which a cell line trained
    from scratch never reads)."""

    def __init__(self, *, filepath: str, lazy: bool = False, metadata: dict | None = None):
        super().__init__(filepath=filepath, metadata=metadata)
        self._lazy = lazy

    def load(self) -> dict | ModelFile:
        return ModelFile(self._path) if self._lazy else load_torch_file(self._path)

    def save(self, data: dict) -> None:
        save_torch_file(self._path, data)


class CheckpointStoreDataset(_FileDataset):
    """A training node's resumable checkpoint file, handed over as a :class:`CheckpointStore` that the
    training loop writes after every epoch. Read-only as a dataset: a run never saves it through the catalog."""

    def load(self) -> CheckpointStore:
        return CheckpointStore(self._path)

    def save(self, data) -> None:
        raise DatasetError(f"{self._path}: the training loop writes this checkpoint itself, after every epoch")

    def _exists(self) -> bool:
        return True


class WellTableError(ValueError):
    """A cached per-well table (logits, embeddings) breaks its contract; the message names file, rows, columns."""


def check_well_table(table: pd.DataFrame, source: str) -> None:
    """``id_code`` first and unique, then float columns only, every value finite."""
    if table.columns.empty or table.columns[0] != "id_code":
        raise WellTableError(f"{source}: the first column must be id_code, found {list(table.columns[:1])}")
    ids = table["id_code"]
    if ids.isna().any() or ids.duplicated().any():
        bad = ids[ids.isna() | ids.duplicated()]
        raise WellTableError(f"{source}: id_code must be unique and set; {len(bad)} rows are not, e.g. row "
                             f"{bad.index[0]} ({bad.iloc[0]!r})")
    values = table.iloc[:, 1:]
    not_float = [f"{c} ({t})" for c, t in values.dtypes.items() if not pd.api.types.is_float_dtype(t)]
    if not_float:
        raise WellTableError(f"{source}: {len(not_float)} columns are not float, e.g. {', '.join(not_float[:3])}")
    finite = np.isfinite(values.to_numpy())
    if not finite.all():
        rows, cols = np.flatnonzero(~finite.all(axis=1)), values.columns[~finite.all(axis=0)]
        raise WellTableError(f"{source}: {int((~finite).sum())} values are NaN or infinite, in {len(rows)} rows "
                             f"(e.g. id_code {ids.iloc[rows[0]]}) and {len(cols)} columns (e.g. {list(cols[:3])})")


class WellTableDataset(ParquetDataset):
    """A parquet table of per-well model outputs (logits or embeddings): ``id_code``, then float columns.

    Checked on load with :func:`check_well_table`, so a corrupt cache fails naming the file instead of
    silently changing answers downstream.
    """

    def load(self) -> pd.DataFrame:
        table = super().load()
        check_well_table(table, str(self._filepath))
        return table


class OptionalCSVDataset(CSVDataset):
    """A CSV table that a command writes before a run, not a node: while its file is absent it loads as a table
    with ``columns`` and no rows (``heldout_copies``, which only the final fit writes)."""

    def __init__(self, *, columns: list[str], **kwargs):
        super().__init__(**kwargs)
        self._columns = list(columns)

    def load(self) -> pd.DataFrame:
        if not self._exists():
            return pd.DataFrame(columns=self._columns)
        return super().load()


class LogitMembersDataset(AbstractDataset):
    """A folder of cached-logits tables from other trained models (``<member>.parquet``), loaded as
    {member name: table}; an absent or empty folder loads as {} (no ensemble). Read only: a member
    is added by copying a finished run's ``valid_logits``/``test_logits`` file into it."""

    def __init__(self, path: str, metadata: dict | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> dict[str, pd.DataFrame]:
        members = {}
        for file in sorted(self._path.glob("*.parquet")):
            table = pd.read_parquet(file)
            check_well_table(table, str(file))
            members[file.stem] = table
        return members

    def save(self, data) -> None:
        raise DatasetError(f"{self._path}: ensemble members are copied in by hand, not written by a run")

    def _exists(self) -> bool:
        return True  # an absent folder loads too: no members

    def _describe(self) -> dict:
        return {"path": str(self._path)}
