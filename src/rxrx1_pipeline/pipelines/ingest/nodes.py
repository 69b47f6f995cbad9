"""Read and validate the RxRx1 metadata (the Kaggle folder or the rxrx.ai release); build the well and site tables."""

import logging

import numpy as np
import pandas as pd

from rxrx1_pipeline.leak.plates import CELL_LINES, CHANNELS, EXPERIMENT_NAME, PLATES, SITES, WELLS, cell_line_of
from rxrx1_pipeline.storage.downloads import IMAGE_ROOT, KAGGLE, RELEASE_FILE, Download

log = logging.getLogger(__name__)

_BASE_COLUMNS = ["id_code", "experiment", "plate", "well"]
REQUIRED_COLUMNS = {
    "train.csv": [*_BASE_COLUMNS, "sirna"],
    "test.csv": _BASE_COLUMNS,
    "train_controls.csv": [*_BASE_COLUMNS, "sirna", "well_type"],
    "test_controls.csv": [*_BASE_COLUMNS, "sirna", "well_type"],
}
CONTROL_TYPES = ("positive_control", "negative_control")
WELL_COLUMNS = ["id_code", "experiment", "cell_line", "plate", "well", "split", "well_type", "sirna"]


class MetadataError(ValueError):
    """A metadata CSV breaks the RxRx1 format; the message names file, row and problem."""


def _fail(file: str, df: pd.DataFrame, bad: pd.Series, problem: str) -> None:
    """Raise for the first row flagged in ``bad``; ``problem`` may use {value} and {row}."""
    if not bad.any():
        return
    rows = df.loc[bad.to_numpy()]
    first = rows.iloc[0]
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    raise MetadataError(f"{file}: row {first['id_code']}: {problem.format(**first.to_dict())}{more}")


def validate_table(df: pd.DataFrame, file: str) -> pd.DataFrame:
    """Check one metadata CSV and return it with typed columns (plate int, sirna Int64)."""
    missing = [c for c in REQUIRED_COLUMNS[file] if c not in df.columns]
    if missing:
        raise MetadataError(f"{file}: missing column(s) {', '.join(missing)}")
    df = df[REQUIRED_COLUMNS[file]].copy()
    for col in ("id_code", "experiment", "well"):
        _fail(file, df, df[col].isna(), f"empty {col}")
        df[col] = df[col].astype(str)
    _fail(file, df, df["id_code"].duplicated(), "duplicate id_code")
    _fail(file, df, ~df["experiment"].str.fullmatch(EXPERIMENT_NAME),
          "experiment {experiment!r} is not CELLLINE-NN")
    plate = pd.to_numeric(df["plate"], errors="coerce")
    _fail(file, df, ~plate.isin(PLATES), "plate {plate!r} outside 1-4")
    df["plate"] = plate.astype("int64")
    _fail(file, df, ~df["well"].isin(WELLS), "well {well!r} outside B02-O23")
    expected = df["experiment"] + "_" + df["plate"].astype(str) + "_" + df["well"]
    df["_expected"] = expected
    _fail(file, df, df["id_code"] != expected,
          "id_code disagrees with experiment/plate/well (expected {_expected})")
    df = df.drop(columns="_expected")
    if "sirna" in df.columns:
        sirna = pd.to_numeric(df["sirna"], errors="coerce")
        bad = sirna.isna() | (sirna < 0) | (sirna != sirna.round())
        _fail(file, df, bad, "siRNA id {sirna!r} out of range (not a non-negative integer)")
        df["sirna"] = sirna.astype("Int64")
    if "well_type" in df.columns:
        _fail(file, df, ~df["well_type"].isin(CONTROL_TYPES),
              f"unknown well_type {{well_type!r}} (expected one of {', '.join(CONTROL_TYPES)})")
    return df


def ingest_download(raw_metadata: Download) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The validated wells (:func:`build_wells`), the test labels where the download has them (the rxrx.ai
    release: checked against the test treatment wells; read by nothing but the test scoring) and the folder's
    layout (``layout``, ``image_root``: where the {train|test}/ image trees lie)."""
    wells = build_wells(*(raw_metadata.tables[f] for f in ("train.csv", "test.csv", "train_controls.csv",
                                                           "test_controls.csv")))
    labels = raw_metadata.test_labels.astype({"id_code": str, "sirna": "Int64"}).reset_index(drop=True)
    if len(labels):
        test = wells[(wells["split"] == "test") & (wells["well_type"] == "treatment")]
        _fail(RELEASE_FILE, labels, ~labels["id_code"].isin(test["id_code"]), "test label of a well that is no test "
              "treatment well")
        treatments = wells.loc[(wells["split"] == "train") & (wells["well_type"] == "treatment"), "sirna"]
        _fail(RELEASE_FILE, labels, ~labels["sirna"].isin(treatments), "test siRNA id {sirna} is no train treatment")
        log.info("Test labels: %d of %d test treatment wells labelled (%s); read only to score the test set",
                 len(labels), len(test), raw_metadata.layout)
    return wells, labels, {"layout": raw_metadata.layout, "image_root": raw_metadata.image_root}


def build_wells(
    train: pd.DataFrame, test: pd.DataFrame, train_controls: pd.DataFrame, test_controls: pd.DataFrame
) -> pd.DataFrame:
    """One row per well of train, test and controls, validated.

    Columns: id_code, experiment, cell_line, plate, well, split, well_type, sirna (null where unknown).
    """
    tables = {"train.csv": train, "test.csv": test, "train_controls.csv": train_controls,
              "test_controls.csv": test_controls}
    checked = {file: validate_table(df, file) for file, df in tables.items()}
    if checked["test.csv"].empty:
        raise MetadataError("test.csv: no wells (a header only): there is nothing to predict, and a run would "
                            "train every model before failing; add the test wells (or point data_root at a "
                            "complete download)")
    check_sirna_ids(checked)
    check_control_kinds(checked)

    parts = []
    for file, df in checked.items():
        df = df.copy()
        df["split"] = "train" if file.startswith("train") else "test"
        if "well_type" not in df.columns:
            df["well_type"] = "treatment"
        if "sirna" not in df.columns:
            df["sirna"] = pd.array([pd.NA] * len(df), dtype="Int64")
        df["_file"] = file
        parts.append(df)
    wells = pd.concat(parts, ignore_index=True)
    dup = wells["id_code"].duplicated(keep="first")
    if dup.any():
        row = wells.loc[dup.to_numpy()].iloc[0]
        first = wells.loc[wells["id_code"] == row["id_code"], "_file"].iloc[0]
        raise MetadataError(f"{row['_file']}: row {row['id_code']}: id_code also listed in {first}")
    wells["cell_line"] = cell_line_of(wells["experiment"])
    check_cell_lines_and_splits(wells)
    wells = wells[WELL_COLUMNS].sort_values(["split", "experiment", "plate", "well"], ignore_index=True)
    counts = wells.groupby(["split", "well_type"]).size()
    log.info("Ingested %d wells: %s", len(wells),
             ", ".join(f"{s} {t} {n}" for (s, t), n in counts.items()))
    return wells


CONTROL_FILES = ("train_controls.csv", "test_controls.csv")


def check_sirna_ids(checked: dict[str, pd.DataFrame]) -> None:
    """Treatment ids (train.csv) must lie below every control id (the control files). When they overlap, the
    side with fewer offending rows holds the bad one (a treatment row among the control ids, or a control row
    among the treatment ids), and the error names that file and row, and the row it collides with."""
    train = checked["train.csv"]
    controls = pd.concat([checked[f].assign(_file=f) for f in CONTROL_FILES], ignore_index=True)
    if controls.empty or train.empty:
        return
    first_control, last_treatment = int(controls["sirna"].min()), int(train["sirna"].max())
    if last_treatment < first_control:
        return
    high = train[train["sirna"] >= first_control]  # treatment rows among the control ids
    low = controls[controls["sirna"] <= last_treatment]  # control rows among the treatment ids
    if len(low) < len(high):
        file = str(low["_file"].iloc[0])
        rows = low[low["_file"] == file]
        same = train.loc[train["sirna"] == rows["sirna"].iloc[0], "id_code"]
        clash = (f"is also a treatment siRNA id (train.csv, e.g. row {same.iloc[0]})" if len(same)
                 else f"is not above the treatment ids of train.csv (up to {last_treatment})")
        _fail(file, rows, pd.Series(True, index=rows.index),
              f"{{well_type}} siRNA id {{sirna}} {clash}; control ids must lie above every treatment id")
    same = controls[controls["sirna"] == high["sirna"].iloc[0]]
    also = (f"; it is the {same['well_type'].iloc[0]} id of {same['_file'].iloc[0]} (row {same['id_code'].iloc[0]})"
            if len(same) else "")
    _fail("train.csv", train, train["sirna"] >= first_control,
          f"siRNA id {{sirna}} out of range (treatment ids must be below the control ids, >= {first_control}){also}")


def check_control_kinds(checked: dict[str, pd.DataFrame]) -> None:
    """Each control siRNA id is of one kind: an id listed both as a negative and as a positive control would be
    trained as one class. The error names a row of the rarer kind for that id and a row of the other."""
    controls = pd.concat([checked[f].assign(_file=f) for f in CONTROL_FILES], ignore_index=True)
    kinds = controls.groupby("sirna")["well_type"].transform("nunique")
    mixed = controls[kinds > 1]
    if mixed.empty:
        return
    sirna = mixed["sirna"].iloc[0]
    rows = mixed[mixed["sirna"] == sirna]
    rare = rows["well_type"].value_counts().index[-1]
    other = rows[rows["well_type"] != rare].iloc[0]
    bad = rows[rows["well_type"] == rare]
    file = str(bad["_file"].iloc[0])
    _fail(file, bad[bad["_file"] == file], pd.Series(True, index=bad.index[bad["_file"] == file]),
          f"{{well_type}} siRNA id {{sirna}} is also the {other['well_type']} id of {other['_file']} (e.g. row "
          f"{other['id_code']}): a control id must be of one kind (negative or positive), or both would be trained "
          "as one class")


def check_cell_lines_and_splits(wells: pd.DataFrame) -> None:
    """What the later stages rely on, checked now: every cell line has a pipeline namespace, labelled
    experiments and test wells, and no experiment is in both train and test files. ``wells`` still has its
    ``_file``."""
    for file, rows in wells.groupby("_file", sort=False):
        _fail(file, rows, ~rows["cell_line"].isin(CELL_LINES),
              f"cell line {{cell_line!r}} has no pipeline namespace (the project knows {', '.join(CELL_LINES)}; "
              "add it to plates.CELL_LINES and give it a parameter block)")
    splits = wells.groupby("experiment")["split"].nunique()
    both = wells[wells["experiment"].isin(splits.index[splits > 1]) & (wells["split"] == "test")]
    if len(both):
        _fail(str(both["_file"].iloc[0]), both, pd.Series(True, index=both.index),
              "experiment {experiment} is in both the train and the test files")
    trained = set(wells.loc[wells["split"] == "train", "cell_line"])
    untrained = wells[~wells["cell_line"].isin(trained)]
    if len(untrained):
        _fail(str(untrained["_file"].iloc[0]), untrained, pd.Series(True, index=untrained.index),
              "cell line {cell_line} has no labelled train experiment to learn from")
    untested = sorted(trained - set(wells.loc[wells["_file"] == "test.csv", "cell_line"]))
    if untested:
        log.info("No test wells of cell line(s) %s: their models still train and are validated on their held-out "
                 "experiments; the submission holds the other lines' wells", ", ".join(untested))
    absent = sorted(set(CELL_LINES) - set(wells["cell_line"]))
    if absent:
        log.info("No wells of cell line(s) %s in this data set: they get no model and score no wells; the run "
                 "trains %s", ", ".join(absent), ", ".join(sorted(set(wells["cell_line"]))))


def build_class_index(wells: pd.DataFrame) -> pd.DataFrame:
    """Classes of the model: every labelled siRNA of train (treatments, then controls as extra classes)."""
    labelled = wells[(wells["split"] == "train") & wells["sirna"].notna()]
    classes = (labelled.groupby("sirna", as_index=False)["well_type"].first()
               .sort_values(["sirna"], ignore_index=True))
    classes["sirna"] = classes["sirna"].astype("int64")
    classes["class_index"] = np.arange(len(classes))
    log.info("Model classes: %d treatment siRNAs + %d controls",
             (classes["well_type"] == "treatment").sum(), (classes["well_type"] != "treatment").sum())
    return classes[["sirna", "class_index", "well_type"]]


def build_sites(wells: pd.DataFrame, data_layout: dict | None = None) -> pd.DataFrame:
    """One row per (well, site) with the six channel PNG paths relative to data_root, under the layout's image
    root (``data_layout``, from :func:`ingest_download`; none: the Kaggle folder's).

    Vectorised form of ``plates.site_prefix`` + ``_w{channel}.png``.
    """
    sites = wells[["id_code", "split", "experiment", "plate", "well"]].merge(
        pd.DataFrame({"site": list(SITES)}), how="cross")
    root = (data_layout or {"image_root": IMAGE_ROOT[KAGGLE]})["image_root"]
    prefix = (root + sites["split"] + "/" + sites["experiment"] + "/Plate" + sites["plate"].astype(str) + "/"
              + sites["well"] + "_s" + sites["site"].astype(str))
    for c in CHANNELS:
        sites[f"w{c}"] = prefix + f"_w{c}.png"
    return sites.drop(columns=["experiment", "plate", "well"])
