"""A synthetic RxRx1: the real folder layout and CSV formats, the same hidden structure, rendered cells.

Hidden structure (as in the real data): treatment siRNAs fall into as many groups as there are
plates; each plate of an experiment holds one group, the layout being one of the cyclic rotations;
train uses all rotations but one, which test uses most. Images: cells whose per-channel appearance
depends on the siRNA (the learnable phenotype) and the cell line, under strong experiment and
plate batch effects (gain, offset, illumination) and noise.
"""

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rxrx1_pipeline.leak.plates import CHANNELS, PLATES, SITES, WELLS, id_code, site_prefix
from rxrx1_pipeline.schema import Synthetic
from rxrx1_pipeline.storage.downloads import IMAGE_ROOT, KAGGLE_FILES, RELEASE, Download

log = logging.getLogger(__name__)

N_CHANNELS = len(CHANNELS)


def _rotation_cycles(n_rotations: int) -> tuple[list[int], list[int]]:
    """Rotation sequences for train and test experiments.

    Train cycles through rotations 0..n-2 with the first most frequent (real: 22/7/4 experiments);
    test mostly uses the last rotation, which train never uses, and sometimes the others.
    """
    train_only = list(range(n_rotations - 1))
    train = [train_only[0]] + [r for k in train_only[1:] for r in (k, train_only[0])]
    last = n_rotations - 1
    test = [r for k in train_only for r in (last, k)]
    return train, test


def experiment_counts(params: Synthetic, cell_line: str) -> dict[str, int]:
    """{"train": n, "test": m} for one cell line: ``experiments`` is either that mapping for every cell
    line, or a mapping from cell line to it (the RxRx1-shaped preset: real counts per cell line)."""
    counts = params.experiments
    return counts[cell_line] if cell_line in counts else counts


def design_plates(params: Synthetic) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Lay out experiments, plates and wells; return the four CSV tables and the hidden truth.

    The truth table has every well (test included) with its siRNA, plate group and rotation.
    """
    rng = np.random.default_rng(params.seed)
    n_groups = len(PLATES)
    per_group = params.sirnas_per_group
    n_treat = n_groups * per_group
    n_pos = params.positive_controls
    negative_id = n_treat + n_pos
    groups = rng.permutation(n_treat).reshape(n_groups, per_group)
    train_cycle, test_cycle = _rotation_cycles(n_groups)
    free_wells = [w for w in WELLS if w != "B02"]
    rows = []
    counters = {"train": 0, "test": 0}
    for cell_line in params.cell_lines:
        number = 0
        for split in ("train", "test"):
            for _ in range(experiment_counts(params, cell_line)[split]):
                number += 1
                experiment = f"{cell_line}-{number:02d}"
                cycle = train_cycle if split == "train" else test_cycle
                rotation = cycle[counters[split] % len(cycle)]
                counters[split] += 1
                for plate in PLATES:
                    group = (plate - 1 + rotation) % n_groups
                    sirnas = np.concatenate([groups[group], np.arange(n_treat, n_treat + n_pos)])
                    positions = rng.choice(len(free_wells), size=len(sirnas), replace=False)
                    plate_wells = [("B02", negative_id, "negative_control")] + [
                        (free_wells[p], int(s), "treatment" if s < n_treat else "positive_control")
                        for p, s in zip(positions, sirnas)]
                    for well, sirna, well_type in plate_wells:
                        if well_type == "treatment" and rng.random() < params.missing_well_rate:
                            continue
                        rows.append(dict(id_code=id_code(experiment, plate, well), experiment=experiment,
                                         plate=plate, well=well, sirna=sirna, well_type=well_type,
                                         split=split, cell_line=cell_line, group=group, rotation=rotation))
    truth = pd.DataFrame(rows).sort_values(["split", "experiment", "plate", "well"], ignore_index=True)
    base = ["id_code", "experiment", "plate", "well"]
    is_treat = truth["well_type"] == "treatment"
    train, test = truth["split"] == "train", truth["split"] == "test"
    tables = (
        truth.loc[train & is_treat, [*base, "sirna"]],
        truth.loc[test & is_treat, base],
        truth.loc[train & ~is_treat, [*base, "sirna", "well_type"]],
        truth.loc[test & ~is_treat, [*base, "sirna", "well_type"]],
    )
    log.info("Synthetic layout: %d experiments, %d treatment siRNAs in %d groups, %d wells (%d missing)",
             truth["experiment"].nunique(), n_treat, n_groups, len(truth),
             truth["experiment"].nunique() * len(PLATES) * (per_group + n_pos + 1) - len(truth))
    return (*[t.reset_index(drop=True) for t in tables], truth)


@dataclass(frozen=True)
class _World:
    """Random factors shared by all images: phenotypes, cell-line looks, batch effects."""

    size: int
    seed: int
    sirna_effect: np.ndarray  # (n_sirna, n_cell_lines, 8): 6 channel log-gains, log-size, elongation
    line_base: np.ndarray  # (n_cell_lines, 6) base channel brightness
    line_cells: np.ndarray  # (n_cell_lines, 2) mean cell count per site, nucleus radius in px
    exp_gain: dict  # experiment -> (6,) gain
    exp_offset: dict  # experiment -> (6,) offset
    plate_gain: dict  # (experiment, plate) -> (6,) gain
    illumination: dict  # (experiment, plate) -> (2,) linear slope of the illumination field
    noise: float


def _make_world(truth: pd.DataFrame, params: Synthetic) -> _World:
    rng = np.random.default_rng(params.seed + 1)
    n_sirna = int(truth["sirna"].max()) + 1
    n_lines = len(params.cell_lines)
    strength = params.phenotype_strength
    shared = rng.normal(size=(n_sirna, 1, 8))
    specific = rng.normal(size=(n_sirna, n_lines, 8))
    effect = strength * (shared + params.cell_line_specificity * specific)
    negative = truth.loc[truth["well_type"] == "negative_control", "sirna"].iloc[0]
    effect[negative] = 0.0
    positive = truth.loc[truth["well_type"] == "positive_control", "sirna"].unique()
    effect[positive] *= 1.5
    line_base = np.exp(rng.normal(0.0, 0.35, size=(n_lines, N_CHANNELS))) * np.array([60, 35, 45, 40, 40, 45])
    line_cells = np.column_stack([rng.uniform(6, 11, n_lines), rng.uniform(0.045, 0.06, n_lines)])
    b = params.batch_strength
    experiments = truth["experiment"].unique()
    plates = truth[["experiment", "plate"]].drop_duplicates().itertuples(index=False)
    exp_gain = {e: np.exp(rng.normal(0.0, b, N_CHANNELS)) for e in experiments}
    exp_offset = {e: rng.uniform(0.0, 12.0 * b, N_CHANNELS) for e in experiments}
    plate_gain, illumination = {}, {}
    for e, p in plates:
        plate_gain[(e, p)] = np.exp(rng.normal(0.0, b / 2, N_CHANNELS))
        illumination[(e, p)] = rng.uniform(-b, b, 2)
    return _World(params.image_size, params.seed, effect, line_base, line_cells,
                  exp_gain, exp_offset, plate_gain, illumination, params.noise)


def _blobs(rng: np.random.Generator, size: int, cells: int = 8) -> np.ndarray:
    """A smooth random texture in [0, 1]: low-resolution noise upsampled."""
    from scipy.ndimage import zoom

    n = max(2, size // cells)
    return zoom(rng.random((n, n)), size / n, order=1, grid_mode=True, mode="nearest")[:size, :size]


def _render_site(world: _World, line: int, sirna: int, experiment: str, plate: int, prefix: str) -> np.ndarray:
    """Render one site: (6, size, size) uint8."""
    size = world.size
    rng = np.random.default_rng([world.seed, zlib.crc32(prefix.encode())])
    effect = world.sirna_effect[sirna, line]
    gains = np.exp(0.35 * effect[:N_CHANNELS])
    n_cells = max(1, rng.poisson(world.line_cells[line, 0]))
    radius = world.line_cells[line, 1] * size * np.exp(0.15 * effect[6])
    elongation = np.exp(0.2 * abs(effect[7]))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centres = rng.uniform(0, size, (n_cells, 2))
    angle = rng.uniform(0, np.pi, n_cells)
    cell_r = radius * np.exp(rng.normal(0, 0.12, n_cells))
    dy = yy[None] - centres[:, 0, None, None]
    dx = xx[None] - centres[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = (dx * cos + dy * sin) / elongation, (-dx * sin + dy * cos) * elongation
    d = np.sqrt(u**2 + v**2) / cell_r[:, None, None]  # 1 at the nucleus edge
    nucleus = 1.0 / (1.0 + np.exp((d - 1.0) * 8.0))
    cytoplasm = np.exp(-((d / 2.6) ** 2)) * (1.0 - nucleus)
    membrane = np.exp(-(((d - 2.4) / 0.35) ** 2))
    golgi_d = np.sqrt((u - 1.3 * cell_r[:, None, None]) ** 2 + v**2) / cell_r[:, None, None]
    golgi = np.exp(-((golgi_d / 0.45) ** 2))
    per_cell = np.exp(rng.normal(0, 0.25, (n_cells, N_CHANNELS)))[:, :, None, None]
    texture = _blobs(rng, size, 4 + int(2 * abs(effect[3])))
    layers = np.stack([nucleus, cytoplasm, membrane + 0.3 * cytoplasm, nucleus * texture,
                       cytoplasm * _blobs(rng, size, 6), golgi], axis=1)  # (cells, 6, H, W)
    signal = (layers * per_cell).sum(0) * (world.line_base[line] * gains)[:, None, None]
    slope = world.illumination[(experiment, plate)]
    field = 1.0 + slope[0] * (xx / size - 0.5) + slope[1] * (yy / size - 0.5)
    gain = (world.exp_gain[experiment] * world.plate_gain[(experiment, plate)])[:, None, None]
    image = gain * field * signal + world.exp_offset[experiment][:, None, None] + 3.0
    image = image + rng.normal(0, world.noise, image.shape) * np.sqrt(image)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_sites(truth: pd.DataFrame, params: Synthetic) -> dict[str, Callable[[], np.ndarray]]:
    """Lazy renderers for every (well, site) of the synthetic dataset, keyed by image prefix."""
    world = _make_world(truth, params)
    line_index = {c: i for i, c in enumerate(params.cell_lines)}
    renderers = {}
    for row in truth.itertuples(index=False):
        for site in SITES:
            prefix = IMAGE_ROOT[params.layout] + site_prefix(row.split, row.experiment, row.plate, row.well, site)
            renderers[prefix] = (lambda r=row, p=prefix: _render_site(
                world, line_index[r.cell_line], int(r.sirna), r.experiment, r.plate, p))
    log.info("Rendering %d sites of %dx%d px, 6 channels", len(renderers), params.image_size,
             params.image_size)
    return renderers


def package_download(train: pd.DataFrame, test: pd.DataFrame, train_controls: pd.DataFrame,
                     test_controls: pd.DataFrame, truth: pd.DataFrame, params: Synthetic) -> Download:
    """The generated metadata in the folder layout ``params.layout``; the rxrx.ai release's carries the test
    labels, as the real release does (the Kaggle folder's does not: they stay in ``synthetic_truth``)."""
    labels = truth.loc[(truth["split"] == "test") & (truth["well_type"] == "treatment"), ["id_code", "sirna"]]
    tables = dict(zip(KAGGLE_FILES, (train, test, train_controls, test_controls)))
    if params.layout != RELEASE:
        return Download(params.layout, tables)
    return Download(params.layout, tables, labels.astype({"sirna": "Int64"}).reset_index(drop=True))
