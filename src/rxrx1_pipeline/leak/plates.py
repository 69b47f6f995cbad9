"""Plate geometry, naming and the plate-layout table format of RxRx1, shared by all pipelines."""

import numpy as np
import pandas as pd

from rxrx1_pipeline.schema import CELL_LINES  # noqa: F401 (defined with the parameter blocks, one per line)

ROWS = "BCDEFGHIJKLMNO"  # the outer ring (A, P, 01, 24) of the 384-well plate is unused
COLUMNS = range(2, 24)
WELLS = tuple(f"{r}{c:02d}" for r in ROWS for c in COLUMNS)  # B02 .. O23, 308 wells
PLATES = (1, 2, 3, 4)
SITES = (1, 2)
CHANNELS = (1, 2, 3, 4, 5, 6)


EXPERIMENT_NAME = r"[A-Za-z0-9]+-\w+"  # CELLLINE-NN, e.g. HUVEC-17


def cell_line_of(experiments: pd.Series) -> pd.Series:
    """The cell line each experiment name (``CELLLINE-NN``) belongs to."""
    return experiments.str.split("-").str[0]


def id_code(experiment: str, plate: int, well: str) -> str:
    """The RxRx1 well identifier, e.g. ``HEPG2-01_1_B03``."""
    return f"{experiment}_{plate}_{well}"


def site_prefix(split: str, experiment: str, plate: int, well: str, site: int) -> str:
    """Image path of one site without the channel suffix, relative to data_root."""
    return f"{split}/{experiment}/Plate{plate}/{well}_s{site}"


# The plate-layout table format: one column ``plate_<p>`` per plate holding the plate group on it.
# ``plate_layouts`` (candidate layouts) and ``{valid,test}_plate_groups`` (one row per experiment) use it.
LAYOUT_PREFIX = "plate_"


def layout_columns(plates) -> list[str]:
    """Column names of the group-per-plate columns, e.g. ``plate_1``."""
    return [f"{LAYOUT_PREFIX}{int(p)}" for p in plates]


def layout_matrix(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(plate numbers ascending, rows x plates int64 array of groups) of a layout table."""
    cols = [c for c in table.columns if c.startswith(LAYOUT_PREFIX)]
    plates = np.array([int(c.removeprefix(LAYOUT_PREFIX)) for c in cols])
    order = np.argsort(plates)
    return plates[order], table[[cols[i] for i in order]].to_numpy(np.int64)


def layout_long(table: pd.DataFrame, value_name: str = "group") -> pd.DataFrame:
    """A per-experiment layout table in long form: experiment, plate (int64), ``value_name``."""
    cols = [c for c in table.columns if c.startswith(LAYOUT_PREFIX)]
    long = table.melt(id_vars="experiment", value_vars=cols, var_name="plate", value_name=value_name)
    long["plate"] = long["plate"].str.removeprefix(LAYOUT_PREFIX).astype(np.int64)
    return long
