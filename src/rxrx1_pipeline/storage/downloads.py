"""RxRx1 as it is downloaded: the Kaggle competition folder, or the rxrx.ai release.

- ``kaggle``: ``train.csv``, ``test.csv``, ``train_controls.csv``, ``test_controls.csv`` (one row per well; the
  test treatments unlabelled) and the images under ``{train|test}/<experiment>/Plate<p>/<well>_s<site>_w<c>.png``.
- ``rxrx.ai``: one ``metadata.csv``, a row per site (``site_id, well_id, cell_type, dataset, experiment, plate,
  well, site, well_type, sirna, sirna_id``; ``sirna`` is the ThermoFisher name, ``sirna_id`` the integer id), with
  the labels of the test sites too, and the images under ``images/{train|test}/<experiment>/Plate<p>/...``.

Both read into the same four tables of the Kaggle files (:class:`Download`), so ingest validates them with one
set of rules; the release's test labels are kept apart (``test_labels``), for scoring only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

KAGGLE, RELEASE = "kaggle", "rxrx.ai"
KAGGLE_FILES = ("train.csv", "test.csv", "train_controls.csv", "test_controls.csv")
RELEASE_FILE = "metadata.csv"
RELEASE_COLUMNS = ("site_id", "well_id", "cell_type", "dataset", "experiment", "plate", "well", "site", "well_type",
                   "sirna", "sirna_id")
IMAGE_ROOT = {KAGGLE: "", RELEASE: "images/"}  # where the {split}/ image trees lie, relative to data_root


class DownloadError(ValueError):
    """A data folder is neither layout, or its release metadata breaks the format; the message names the file
    (and row) and what is missing."""


@dataclass
class Download:
    """The metadata of a data folder: the four Kaggle tables (``tables``, by file name), the test labels where
    the folder has them (``test_labels``: id_code, sirna; empty otherwise) and the folder's ``layout``."""

    layout: str
    tables: dict[str, pd.DataFrame]
    test_labels: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        {"id_code": pd.Series(dtype=str), "sirna": pd.Series(dtype="Int64")}))

    @property
    def image_root(self) -> str:
        return IMAGE_ROOT[self.layout]


def detect_layout(root: Path) -> str:
    """``kaggle`` or ``rxrx.ai`` from the files in ``root``, or a :class:`DownloadError` naming what is missing."""
    if (root / RELEASE_FILE).is_file():
        return RELEASE
    present = [f for f in KAGGLE_FILES if (root / f).is_file()]
    if len(present) == len(KAGGLE_FILES):
        return KAGGLE
    if present:
        missing = ", ".join(f for f in KAGGLE_FILES if f not in present)
        raise DownloadError(f"{root}: a Kaggle RxRx1 folder, but {missing} missing (it needs {', '.join(KAGGLE_FILES)})")
    raise DownloadError(f"{root}: neither RxRx1 layout: no {RELEASE_FILE} (the rxrx.ai release) and none of "
                        f"{', '.join(KAGGLE_FILES)} (the Kaggle competition folder); point data_root at the download")


def read_download(root: Path) -> Download:
    """The metadata of the data folder ``root``, in either layout."""
    layout = detect_layout(root)
    if layout == KAGGLE:
        return Download(KAGGLE, {f: pd.read_csv(root / f) for f in KAGGLE_FILES})
    tables, labels = release_to_kaggle(pd.read_csv(root / RELEASE_FILE), str(root / RELEASE_FILE))
    return Download(RELEASE, tables, labels)


def release_to_kaggle(metadata: pd.DataFrame, file: str = RELEASE_FILE) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The release's per-site ``metadata`` as the four Kaggle tables (one row per well, ``sirna`` the integer
    ``sirna_id``; the test treatments unlabelled as in the competition) and the test treatments' labels."""
    missing = [c for c in RELEASE_COLUMNS if c not in metadata.columns]
    if missing:
        raise DownloadError(f"{file}: missing column(s) {', '.join(missing)} (the rxrx.ai release has "
                            f"{', '.join(RELEASE_COLUMNS)})")
    wells = metadata.drop_duplicates("well_id").reset_index(drop=True)
    _refuse(file, wells, ~wells["dataset"].isin(["train", "test"]), "dataset {dataset!r} is not train or test")
    _refuse(file, wells, ~wells["well_type"].isin(["treatment", "negative_control", "positive_control"]),
            "well_type {well_type!r} is not treatment, negative_control or positive_control")
    sirna_id = pd.to_numeric(wells["sirna_id"], errors="coerce")
    _refuse(file, wells, sirna_id.isna() | (sirna_id < 0) | (sirna_id != sirna_id.round()),
            "sirna_id {sirna_id!r} is not a non-negative integer")
    per_well = metadata.groupby("well_id")[["dataset", "well_type", "sirna_id"]].nunique()
    _refuse(file, wells, wells["well_id"].map(per_well.max(axis=1)) > 1,
            "the sites of well {well_id} disagree on dataset, well_type or sirna_id")
    wells = wells.assign(id_code=wells["well_id"].astype(str), sirna=sirna_id.astype("Int64"))
    base = ["id_code", "experiment", "plate", "well"]
    tables = {}
    for split in ("train", "test"):
        mine = wells[wells["dataset"] == split]
        treatment = mine[mine["well_type"] == "treatment"]
        tables[f"{split}.csv"] = treatment[[*base, "sirna"]] if split == "train" else treatment[base]
        tables[f"{split}_controls.csv"] = mine.loc[mine["well_type"] != "treatment", [*base, "sirna", "well_type"]]
    test = wells[(wells["dataset"] == "test") & (wells["well_type"] == "treatment")]
    labels = test[["id_code", "sirna"]].reset_index(drop=True)
    return {name: table.reset_index(drop=True) for name, table in tables.items()}, labels


def kaggle_to_release(tables: dict[str, pd.DataFrame], test_labels: pd.DataFrame,
                      sirna_names: dict[int, str] | None = None) -> pd.DataFrame:
    """The four Kaggle tables and the test labels as the release's ``metadata.csv`` (a row per site; ``sirna``
    the name, ``siRNA-<id>`` unless ``sirna_names`` gives one)."""
    parts = []
    for name, table in tables.items():
        split = name.split("_")[0].removesuffix(".csv")
        part = table.assign(dataset=split, well_type=table["well_type"] if "well_type" in table else "treatment")
        if "sirna" not in part:
            part = part.merge(test_labels, on="id_code", how="left")
        parts.append(part)
    wells = pd.concat(parts, ignore_index=True)
    sites = wells.merge(pd.DataFrame({"site": [1, 2]}), how="cross")
    names = sirna_names or {}
    return pd.DataFrame({
        "site_id": sites["id_code"] + "_" + sites["site"].astype(str), "well_id": sites["id_code"],
        "cell_type": sites["experiment"].str.split("-").str[0], "dataset": sites["dataset"],
        "experiment": sites["experiment"], "plate": sites["plate"], "well": sites["well"], "site": sites["site"],
        "well_type": sites["well_type"],
        "sirna": [names.get(int(s), f"siRNA-{int(s)}") if pd.notna(s) else None for s in sites["sirna"]],
        "sirna_id": sites["sirna"].astype("Int64")})


def _refuse(file: str, wells: pd.DataFrame, bad: pd.Series, problem: str) -> None:
    if bad.any():
        row = wells.loc[bad.to_numpy()].iloc[0]
        more = f" (and {int(bad.sum()) - 1} more wells)" if bad.sum() > 1 else ""
        raise DownloadError(f"{file}: well {row['well_id']}: {problem.format(**row.to_dict())}{more}")
