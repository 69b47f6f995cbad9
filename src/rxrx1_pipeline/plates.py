"""Plate geometry and naming of the RxRx1 layout, shared by all pipelines."""

ROWS = "BCDEFGHIJKLMNO"  # the outer ring (A, P, 01, 24) of the 384-well plate is unused
COLUMNS = range(2, 24)
WELLS = tuple(f"{r}{c:02d}" for r in ROWS for c in COLUMNS)  # B02 .. O23, 308 wells
PLATES = (1, 2, 3, 4)
SITES = (1, 2)
CHANNELS = (1, 2, 3, 4, 5, 6)
CELL_LINES = ("HEPG2", "HUVEC", "RPE", "U2OS")


def id_code(experiment: str, plate: int, well: str) -> str:
    """The RxRx1 well identifier, e.g. ``HEPG2-01_1_B03``."""
    return f"{experiment}_{plate}_{well}"


def site_prefix(split: str, experiment: str, plate: int, well: str, site: int) -> str:
    """Image path of one site without the channel suffix, relative to data_root."""
    return f"{split}/{experiment}/Plate{plate}/{well}_s{site}"
