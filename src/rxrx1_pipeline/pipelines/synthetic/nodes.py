"""A synthetic RxRx1: the real folder layout and CSV formats, the same hidden structure, rendered cells.

Hidden structure (as in the real data): treatment siRNAs fall into as many groups as there are
plates; each plate of an experiment holds one group, the layout being one of the cyclic rotations;
train uses all rotations but one, which test uses most. Images: rendered cells whose morphology depends
on the siRNA (the learnable phenotype) and the cell line: nucleus and cell size, elongation, chromatin
texture, nucleoli, where the ER, actin, mitochondria and Golgi stains sit in the cell, how mitochondria
co-localise with the ER, cell density and clumping. These survive per-image standardisation, as real
phenotypes do (the 1st place standardised each image); per-channel brightness is a minor part. Batch
effects, as in the real data, are per experiment, plate and site: channel gain and offset, an illumination
gradient with vignetting, focus blur, cell density and a small shift of the cells' look; then shot noise.
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
    truth = plant_copies(pd.DataFrame(rows), params.copies)
    truth = truth.sort_values(["split", "experiment", "plate", "well"], ignore_index=True)
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


COPY_ORDER = {1: 4, 2: 1, 3: 2, 4: 3}  # a copy's plate p holds its source's plate COPY_ORDER[p] (HUVEC-18, RPE-03)


def plant_copies(truth: pd.DataFrame, copies: int) -> pd.DataFrame:
    """``truth`` with ``copies`` test experiments made copies of a train experiment of another cell line: each of
    their plates holds the source's wells, siRNAs and well types of plate ``COPY_ORDER[p]``, as the real test
    experiment HUVEC-18 repeats the train experiment RPE-03 (its images differ: they are rendered per
    experiment). The last test experiment of each cell line in turn copies the first train experiment of the
    next line."""
    if not copies:
        return truth
    n_groups = int(truth["group"].max()) + 1
    lines = list(dict.fromkeys(truth["cell_line"]))
    tests = [truth.loc[(truth["split"] == "test") & (truth["cell_line"] == cl), "experiment"].max() for cl in lines]
    trains = [truth.loc[(truth["split"] == "train") & (truth["cell_line"] == cl), "experiment"].min() for cl in lines]
    pairs = [(t, trains[(k + 1) % len(lines)]) for k, t in enumerate(tests) if isinstance(t, str)][:copies]
    if len(pairs) < copies:
        raise ValueError(f"synthetic.copies = {copies}, but only {len(pairs)} cell lines have test experiments")
    for target, source in pairs:
        line = truth.loc[truth["experiment"] == target, "cell_line"].iloc[0]
        copy = pd.concat([truth[(truth["experiment"] == source) & (truth["plate"] == q)].assign(plate=p)
                          for p, q in COPY_ORDER.items()], ignore_index=True)
        copy = copy.assign(experiment=target, cell_line=line, split="test",
                           id_code=[id_code(target, p, w) for p, w in zip(copy["plate"], copy["well"])],
                           rotation=(copy["group"] - (copy["plate"] - 1)) % n_groups)
        truth = pd.concat([truth[truth["experiment"] != target], copy], ignore_index=True)
        log.info("Synthetic copy: %s repeats %s's map, its plates 1-4 being %s's plates %s", target, source, source,
                 ",".join(map(str, COPY_ORDER.values())))
    return truth


# Phenotype dimensions (each siRNA's effect is a vector over these, per cell line). Morphology first: what
# survives per-image standardisation. Then a minor per-channel brightness part.
MORPHOLOGY = ("nucleus_size", "elongation", "cell_size", "chromatin", "nucleoli", "er_spread", "actin_ring",
              "mito_fragmentation", "golgi_dispersal", "colocalisation", "density", "cell_clustering")
N_MORPH = len(MORPHOLOGY)
N_EFFECT = N_MORPH + N_CHANNELS
BRIGHTNESS = 0.08  # log-gain per unit of effect on a channel's brightness: minor, per-image standardisation removes it


@dataclass(frozen=True)
class _World:
    """Random factors shared by all images: phenotypes, cell-line looks, batch effects."""

    size: int
    seed: int
    sirna_effect: np.ndarray  # (n_sirna, n_cell_lines, N_EFFECT): morphology (MORPHOLOGY) then channel log-gains
    line_base: np.ndarray  # (n_cell_lines, 6) base channel brightness
    line_cells: np.ndarray  # (n_cell_lines, 2) mean cell count per site, nucleus radius (share of the side)
    exp_gain: dict  # experiment -> (6,) gain
    exp_offset: dict  # experiment -> (6,) offset
    exp_morph: dict  # experiment -> (N_MORPH,) shift of the cells' look (culture conditions)
    plate_gain: dict  # (experiment, plate) -> (6,) gain
    illumination: dict  # (experiment, plate) -> (4,) linear slopes and vignetting of the illumination field, blur
    batch: float
    noise: float


def _make_world(truth: pd.DataFrame, params: Synthetic) -> _World:
    rng = np.random.default_rng(params.seed + 1)
    n_sirna = int(truth["sirna"].max()) + 1
    n_lines = len(params.cell_lines)
    strength = params.phenotype_strength
    shared = rng.normal(size=(n_sirna, 1, N_EFFECT))
    specific = rng.normal(size=(n_sirna, n_lines, N_EFFECT))
    effect = strength * (shared + params.cell_line_specificity * specific)
    negative = truth.loc[truth["well_type"] == "negative_control", "sirna"].iloc[0]
    effect[negative] = 0.0
    positive = truth.loc[truth["well_type"] == "positive_control", "sirna"].unique()
    effect[positive] *= 1.5
    effect = effect + rng.normal(0.0, 0.6, size=(1, n_lines, N_EFFECT))  # each cell line's own look
    line_base = np.exp(rng.normal(0.0, 0.35, size=(n_lines, N_CHANNELS))) * np.array([90, 60, 70, 60, 80, 60])
    line_cells = np.column_stack([rng.uniform(12, 20, n_lines), rng.uniform(0.04, 0.05, n_lines)])
    b = params.batch_strength
    experiments = truth["experiment"].unique()
    plates = truth[["experiment", "plate"]].drop_duplicates().itertuples(index=False)
    exp_gain = {e: np.exp(rng.normal(0.0, 1.2 * b, N_CHANNELS)) for e in experiments}
    exp_offset = {e: rng.uniform(0.0, 12.0 * b, N_CHANNELS) for e in experiments}
    exp_morph = {e: rng.normal(0.0, 0.3 * b, N_MORPH) for e in experiments}
    plate_gain, illumination = {}, {}
    for e, p in plates:
        plate_gain[(e, p)] = np.exp(rng.normal(0.0, b / 2, N_CHANNELS))
        illumination[(e, p)] = np.array([*rng.uniform(-b, b, 2), rng.uniform(0, b), rng.uniform(0.0, 1.6 * b)])
    return _World(params.image_size, params.seed, effect, line_base, line_cells, exp_gain, exp_offset, exp_morph,
                  plate_gain, illumination, b, params.noise)


def _blobs(rng: np.random.Generator, size: int, cells: int = 8) -> np.ndarray:
    """A smooth random texture in [0, 1]: low-resolution noise upsampled."""
    from scipy.ndimage import zoom

    n = max(2, size // cells)
    return zoom(rng.random((n, n)), size / n, order=1, grid_mode=True, mode="nearest")[:size, :size]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _splat(size: int, ys: np.ndarray, xs: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian spots of peak ``weights`` at the points (ys, xs); points outside the field are dropped."""
    from scipy.ndimage import gaussian_filter

    image = np.zeros((size, size))
    iy, ix = np.rint(ys).astype(int), np.rint(xs).astype(int)
    keep = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
    np.add.at(image, (iy[keep], ix[keep]), weights[keep])
    sigma = max(sigma, 0.4)
    return gaussian_filter(image, sigma, mode="constant", truncate=3.0) * (2 * np.pi * sigma**2)


def _render_site(world: _World, line: int, sirna: int, experiment: str, plate: int, prefix: str) -> np.ndarray:
    """Render one site: (6, size, size) uint8.

    The siRNA changes the cells' morphology (sizes, shape, texture, where each stain sits, how the stains
    co-localise, how many cells and how they lie), which per-image standardisation keeps, and the channels'
    brightness a little. Batch effects per experiment, plate and site: per-channel gain and offset, an
    illumination gradient with vignetting, focus blur, cell density and a small shift of the cells' look.
    """
    from scipy.ndimage import gaussian_filter

    size = world.size
    rng = np.random.default_rng([world.seed, zlib.crc32(prefix.encode())])
    e = world.sirna_effect[sirna, line]
    m = e[:N_MORPH] + world.exp_morph[experiment]
    (nuc_size, elong_e, cell_e, chrom_e, nucleoli_e, er_e, ring_e, mito_e, golgi_e, coloc_e, density_e,
     cluster_e) = m
    b = world.batch
    # cells: count (siRNA density x a plate/site density batch effect), positions (uniform or in clumps)
    density = np.exp(0.35 * density_e + rng.normal(0.0, 0.15 * b))
    n_cells = max(1, rng.poisson(world.line_cells[line, 0] * density))
    clumped = _sigmoid(1.5 * cluster_e)
    anchors = rng.uniform(0, size, (2, 2))
    centres = np.where(rng.random((n_cells, 1)) < clumped,
                       anchors[rng.integers(0, 2, n_cells)] + rng.normal(0, 0.12 * size, (n_cells, 2)),
                       rng.uniform(0, size, (n_cells, 2)))
    radius = world.line_cells[line, 1] * size * np.exp(0.2 * nuc_size) * np.exp(rng.normal(0, 0.1, n_cells))
    elongation = np.exp(0.3 * abs(elong_e) + 0.05) * np.exp(rng.normal(0, 0.05, n_cells))
    cell_ratio = 2.4 * np.exp(0.2 * cell_e)  # cell body radius in nucleus radii
    angle = rng.uniform(0, np.pi, n_cells)
    per_cell = np.exp(rng.normal(0, 0.2, (n_cells, N_CHANNELS)))
    chrom = _sigmoid(1.2 * chrom_e)  # chromatin: smooth or condensed into spots
    spread = 0.35 * cell_ratio * np.exp(0.45 * er_e)  # ER: perinuclear or out to the cell's edge
    ring_share = _sigmoid(1.2 * ring_e)  # actin: a cortical ring or stress fibres along the long axis
    phase = rng.uniform(0, 2 * np.pi, n_cells)
    # each cell's smooth layers, drawn in a window around it: nucleus, ER, actin, nucleoplasm/RNA,
    # cytoplasm, outline
    layers = np.zeros((N_CHANNELS, size, size))
    for i in range(n_cells):
        cy, cx, r, el = centres[i, 0], centres[i, 1], radius[i], elongation[i]
        half = cell_ratio * r * el * 1.3 + 2.0
        y0, y1 = max(0, int(cy - half)), min(size, int(cy + half) + 1)
        x0, x1 = max(0, int(cx - half)), min(size, int(cx + half) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1)[:, None] - cy
        dx = np.arange(x0, x1)[None, :] - cx
        cos, sin = np.cos(angle[i]), np.sin(angle[i])
        u, v = (dx * cos + dy * sin) / (el * r), (-dx * sin + dy * cos) * el / r  # in nucleus radii
        d = np.sqrt(u**2 + v**2)
        nucleus = _sigmoid((1.0 - d) * 6.0)
        body = _sigmoid((1.0 - d / cell_ratio) * 5.0)
        cytoplasm = body * (1.0 - nucleus)
        ring = np.exp(-(((d / cell_ratio) - 0.95) / 0.12) ** 2)
        er = body * (1.0 - 0.7 * nucleus) * np.exp(-np.maximum(d - 1.0, 0.0) / spread)
        fibres = cytoplasm * (0.5 + 0.5 * np.cos(2.5 * np.pi * v + phase[i]))
        actin = ring_share * ring + (1 - ring_share) * fibres + 0.15 * body
        window = layers[:, y0:y1, x0:x1]
        for c, layer in enumerate(((1 - 0.6 * chrom) * nucleus, er, actin, 0.25 * nucleus + 0.12 * cytoplasm,
                                   0.1 * cytoplasm, 0.35 * ring)):
            window[c] += per_cell[i, c] * layer

    def cell_points(k: np.ndarray, rad: Callable[[int], np.ndarray], ang: Callable[[int], np.ndarray]):
        """Points in each cell's own frame (radius in nucleus radii, angle), k per cell, as image (y, x)."""
        owner = np.repeat(np.arange(n_cells), k)
        rho, phi = rad(len(owner)), ang(owner)
        pu, pv = rho * np.cos(phi), rho * np.sin(phi)
        ca, sa, rr, ee = np.cos(angle[owner]), np.sin(angle[owner]), radius[owner], elongation[owner]
        px, py = pu * ee * rr, pv / ee * rr
        return centres[owner, 0] + px * sa + py * ca, centres[owner, 1] + px * ca - py * sa, owner

    # w1 nuclei: chromatin spots
    k = rng.poisson(3 + 6 * chrom, n_cells)
    ys, xs, own = cell_points(k, lambda n: 0.75 * np.sqrt(rng.random(n)), lambda o: rng.uniform(0, 2 * np.pi, len(o)))
    w1 = layers[0] + _splat(size, ys, xs, 0.9 * chrom * per_cell[own, 0], 0.22 * radius.mean())
    # w4 nucleoli / RNA: nucleoli (how many, how large) in a dim nucleoplasm and cytoplasm
    k = rng.poisson(np.exp(0.9 + 0.45 * nucleoli_e), n_cells) + 1
    ys, xs, own = cell_points(k, lambda n: 0.6 * np.sqrt(rng.random(n)), lambda o: rng.uniform(0, 2 * np.pi, len(o)))
    w4 = layers[3] + _splat(size, ys, xs, per_cell[own, 3], 0.28 * radius.mean() * np.exp(-0.2 * nucleoli_e))
    # w2 ER: reticular
    w2 = layers[1] * (0.55 + 0.45 * _blobs(rng, size, max(2, size // 16)))
    w3 = layers[2]
    # w5 mitochondria: puncta (many small when fragmented, fewer larger otherwise), either along the ER
    # (co-localised: where the ER profile puts them) or anywhere in the cell body
    fragment = np.exp(0.4 * mito_e)
    k = rng.poisson(12 * fragment, n_cells)
    coloc = _sigmoid(1.5 * coloc_e)

    def mito_radius(n):
        near = rng.random(n) < coloc
        return np.where(near, 1.0 + rng.exponential(spread, n), 1.0 + rng.random(n) * (cell_ratio - 1.0))

    ys, xs, own = cell_points(k, mito_radius, lambda o: rng.uniform(0, 2 * np.pi, len(o)))
    w5 = layers[4] + _splat(size, ys, xs, per_cell[own, 4] / np.sqrt(fragment), 0.3 * radius.mean() / np.sqrt(fragment))
    # w6 Golgi and membrane: a compact cap beside the nucleus or dispersed around it, and the cell outline
    dispersal = _sigmoid(1.2 * golgi_e)
    side = rng.uniform(0, 2 * np.pi, n_cells)
    k = np.full(n_cells, 8)
    ys, xs, own = cell_points(k, lambda n: 1.25 + rng.normal(0, 0.1 + 0.5 * dispersal, n),
                              lambda o: side[o] + rng.normal(0, 0.35 + 2.0 * dispersal, len(o)))
    w6 = layers[5] + _splat(size, ys, xs, 0.5 * per_cell[own, 5], 0.3 * radius.mean())
    signal = np.stack([w1, w2, w3, w4, w5, w6])
    signal *= (world.line_base[line] * np.exp(BRIGHTNESS * e[N_MORPH:]))[:, None, None]
    # the microscope: focus blur (per plate and site), illumination field, gain and offset, noise
    slope_y, slope_x, vignette, blur = world.illumination[(experiment, plate)]
    blur = (blur + abs(rng.normal(0.0, 0.3 * b))) * size / 64
    if blur > 0.05:
        signal = gaussian_filter(signal, (0, blur, blur), mode="nearest")
    cy, cx = np.mgrid[0:size, 0:size] / size - 0.5
    field = 1.0 + slope_x * cx + slope_y * cy - vignette * (cx**2 + cy**2)
    gain = world.exp_gain[experiment] * world.plate_gain[(experiment, plate)] * np.exp(rng.normal(0, b / 5, N_CHANNELS))
    image = gain[:, None, None] * field * signal + world.exp_offset[experiment][:, None, None] + 3.0
    image = image + rng.normal(0, world.noise, image.shape) * np.sqrt(image)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_sites(truth: pd.DataFrame, params: Synthetic) -> dict[str, Callable[[], np.ndarray]]:
    """Lazy renderers for every (well, site) of the synthetic dataset, keyed by image prefix in the layout's
    image root (the pixels are the same in either layout: a site's noise is seeded by its Kaggle prefix)."""
    world = _make_world(truth, params)
    line_index = {c: i for i, c in enumerate(params.cell_lines)}
    renderers = {}
    for row in truth.itertuples(index=False):
        for site in SITES:
            prefix = site_prefix(row.split, row.experiment, row.plate, row.well, site)
            renderers[IMAGE_ROOT[params.layout] + prefix] = (lambda r=row, p=prefix: _render_site(
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
