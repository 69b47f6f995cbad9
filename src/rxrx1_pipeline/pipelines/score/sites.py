"""The input of the scoring model (a trained run that scores new experiments, ``pipelines/score``): one row per
site of the new experiments, and how to build that table from a folder in the Kaggle or the rxrx.ai layout.

Columns of the table (one row per site; the six channel images of a site are ``<image_prefix>_w1.png`` to
``_w6.png``, 8-bit PNGs as in RxRx1):

- ``experiment`` (``CELLLINE-NN``, e.g. ``HUVEC-17``: the cell line is read from it), ``plate`` (1-4),
  ``well`` (B02-O23), ``site`` (1 or 2), ``image_prefix`` (absolute, or relative to the working directory);
- ``well_type`` (optional, default ``treatment``): ``treatment``, ``negative_control`` or
  ``positive_control``. Control sites are scored for nothing but enter their plate's image statistics
  (plate normalisation, per-plate BatchNorm), as in the run that trained the model: list them to score a
  new experiment exactly as the run scored its own test experiments. Without the column every site is a
  treatment (a table of treatment sites only needs none); a warning says so, and a plate with more treatment
  wells than a plate group has siRNAs (its controls listed without ``well_type``) is refused naming the column.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from rxrx1_pipeline.leak.plates import CELL_LINES, EXPERIMENT_NAME, PLATES, SITES, WELLS, cell_line_of, id_code
from rxrx1_pipeline.storage.downloads import IMAGE_ROOT, KAGGLE, RELEASE, RELEASE_FILE, read_download

log = logging.getLogger(__name__)

REQUIRED = ("experiment", "plate", "well", "site", "image_prefix")
WELL_TYPES = ("treatment", "negative_control", "positive_control")


class ScoringInputError(ValueError):
    """The table given to the scoring model breaks its format; the message names the row and the problem."""


def check_new_sites(table: pd.DataFrame) -> pd.DataFrame:
    """The input table validated and typed, with ``cell_line`` and ``id_code`` added, sorted by well and site."""
    if not isinstance(table, pd.DataFrame):
        raise ScoringInputError(f"the scoring model takes a table (pandas DataFrame) of sites, got "
                                f"{type(table).__name__}; build one with rxrx1_pipeline.pipelines.score.experiment_sites")
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ScoringInputError(f"the sites table lacks column(s) {', '.join(missing)} (it needs "
                                f"{', '.join(REQUIRED)}, and optionally well_type)")
    sites = table.reset_index(drop=True).copy()
    if "well_type" not in sites:
        log.warning("The sites table has no well_type column: every site is taken as a treatment well (give "
                    "controls a well_type of negative_control or positive_control)")
        sites["well_type"] = "treatment"
    for column in ("experiment", "well", "well_type", "image_prefix"):
        _refuse(sites, sites[column].isna(), f"empty {column}")
        sites[column] = sites[column].astype(str)
    sites["cell_line"] = cell_line_of(sites["experiment"])
    _refuse(sites, ~sites["experiment"].str.fullmatch(EXPERIMENT_NAME),
            "experiment {experiment!r} is not CELLLINE-NN")
    _refuse(sites, ~sites["cell_line"].isin(CELL_LINES),
            f"cell line {{cell_line!r}} has no model (the run trained {', '.join(CELL_LINES)})")
    for column, allowed in (("plate", PLATES), ("site", SITES)):
        values = pd.to_numeric(sites[column], errors="coerce")
        _refuse(sites, ~values.isin(allowed), f"{column} {{{column}!r}} is not one of {list(allowed)}")
        sites[column] = values.astype("int64")
    _refuse(sites, ~sites["well"].isin(WELLS), "well {well!r} outside B02-O23")
    _refuse(sites, ~sites["well_type"].isin(WELL_TYPES), f"well_type {{well_type!r}} is not one of {list(WELL_TYPES)}")
    _refuse(sites, sites.duplicated(["experiment", "plate", "well", "site"]), "this site is listed twice")
    sites["id_code"] = [id_code(e, p, w) for e, p, w in zip(sites["experiment"], sites["plate"], sites["well"])]
    _refuse(sites, sites.groupby("id_code")["well_type"].transform("nunique") > 1,
            "the sites of this well disagree on its well_type")
    if not (sites["well_type"] == "treatment").any():
        raise ScoringInputError("the sites table has no treatment site: there is nothing to score")
    return sites.sort_values(["id_code", "site"], ignore_index=True)


def check_treatment_counts(sites: pd.DataFrame, sirna_groups: pd.DataFrame) -> None:
    """Each plate holds at most one treatment well per siRNA of its plate group: more treatment wells than the
    largest group has siRNAs are controls taken for treatments (or another plate's wells), named by column."""
    limit = int(sirna_groups["group"].value_counts().max())
    wells = sites[sites["well_type"] == "treatment"].drop_duplicates("id_code")
    counts = wells.groupby(["experiment", "plate"]).size()
    over = counts[counts > limit]
    if len(over):
        (experiment, plate), n = over.index[0], int(over.iloc[0])
        raise ScoringInputError(f"sites table: {experiment} plate {plate} has {n} treatment wells but a plate group "
                                f"holds {limit} siRNAs: its controls are listed as treatments; give them a well_type "
                                "column (negative_control / positive_control)")


def _refuse(sites: pd.DataFrame, bad: pd.Series, problem: str) -> None:
    """Raise for the first row flagged in ``bad``, naming it; ``problem`` may use the row's columns."""
    if not bad.any():
        return
    index = int(bad.to_numpy().nonzero()[0][0])
    row = sites.iloc[index]
    more = f" (and {int(bad.sum()) - 1} more rows)" if bad.sum() > 1 else ""
    raise ScoringInputError(f"sites table row {index} ({row['experiment']} plate {row['plate']} {row['well']} "
                            f"site {row['site']}): {problem.format(**row.to_dict())}{more}")


def experiment_sites(folder: str | Path, split: str = "test", experiments: list[str] | None = None) -> pd.DataFrame:
    """The sites table of the experiments in a folder of the Kaggle layout (``{split}.csv`` of treatment wells
    and, when present, ``{split}_controls.csv``, the images under ``{split}/<experiment>/Plate<p>/``) or of the
    rxrx.ai release (``metadata.csv``, the images under ``images/{split}/...``); ``experiments`` keeps only
    those."""
    folder = Path(folder)
    release = (folder / RELEASE_FILE).is_file()
    names = (f"{split}.csv", f"{split}_controls.csv")
    tables = [read_download(folder).tables[name] for name in names] if release else []
    for name in names if not release else ():
        if (folder / name).is_file():
            tables.append(pd.read_csv(folder / name))
        elif name == f"{split}.csv":
            raise ScoringInputError(f"no {name} in {folder}: a folder in the Kaggle layout holds {split}.csv "
                                    f"(and {split}_controls.csv) beside the {split}/ image folder, or the rxrx.ai "
                                    f"release its {RELEASE_FILE}")
    tables = [t.assign(well_type=t["well_type"] if "well_type" in t else "treatment") for t in tables]
    wells = pd.concat(tables, ignore_index=True)[["experiment", "plate", "well", "well_type"]]
    if experiments is not None:
        unknown = sorted(set(experiments) - set(wells["experiment"]))
        if unknown:
            raise ScoringInputError(f"experiment(s) {', '.join(unknown)} are not in {folder / f'{split}.csv'}")
        wells = wells[wells["experiment"].isin(experiments)]
    sites = wells.merge(pd.DataFrame({"site": list(SITES)}), how="cross")
    images = folder / IMAGE_ROOT[RELEASE if release else KAGGLE] / split
    sites["image_prefix"] = [str(images / e / f"Plate{p}" / f"{w}_s{s}")
                             for e, p, w, s in zip(sites["experiment"], sites["plate"], sites["well"], sites["site"])]
    return sites
