"""Per-cell-line embedding training: splits, the decode-once image store, plate statistics, training, curves."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from rxrx1_pipeline.images import (
    N_CHANNELS,
    STAT_COLUMNS,
    DecodeJob,
    ImageStore,
    PngSites,
)

log = logging.getLogger(__name__)

# Settings that do not change the trained model, left out of its fingerprint and checkpoint (a run may
# resume on another device or number of processes: the global batch, and so the recipe, is the same).
RUNTIME_ONLY = ("num_workers", "device", "distributed")


def select_sites(wells: pd.DataFrame, sites: pd.DataFrame, classes: pd.DataFrame, cell_line: str,
                 training: dict) -> pd.DataFrame:
    """This cell line's sites with their role: ``fit``, ``valid`` (held-out experiments) or ``test``,
    their ``plate_index`` and their ``store_row`` in the image store.

    ``training["valid_experiments"]`` is a number (the last N labelled experiments) or a list of names.
    """
    mine = wells[wells["cell_line"] == cell_line]
    if mine.empty:
        raise ValueError(f"no wells of cell line {cell_line} in wells.parquet")
    train_exps = sorted(mine.loc[mine["split"] == "train", "experiment"].unique())
    held = training["valid_experiments"]
    if isinstance(held, int) and not 0 < held < len(train_exps):
        raise ValueError(f"{cell_line}: valid_experiments {held} must be at least 1 and fewer than its "
                         f"{len(train_exps)} labelled experiments (holding out all leaves nothing to fit)")
    valid = train_exps[len(train_exps) - held:] if isinstance(held, int) else list(held)
    unknown = sorted(set(valid) - set(train_exps))
    if unknown:
        raise ValueError(f"{cell_line}: valid_experiments {unknown} are not labelled train experiments")
    if len(valid) >= len(train_exps):
        raise ValueError(f"{cell_line}: holding out {len(valid)} of {len(train_exps)} train experiments "
                         "leaves nothing to fit")
    table = sites.drop(columns="split").merge(mine, on="id_code", how="inner")
    table["role"] = np.where(table["split"] == "test", "test",
                             np.where(table["experiment"].isin(valid), "valid", "fit"))
    table = table.merge(classes[["sirna", "class_index"]], on="sirna", how="left")
    table["class_index"] = table["class_index"].fillna(-1).astype("int64")
    plates = table[["experiment", "plate"]].drop_duplicates().reset_index(drop=True)
    plates["plate_index"] = np.arange(len(plates))
    table = table.merge(plates, on=["experiment", "plate"]).sort_values(["role", "id_code", "site"],
                                                                        ignore_index=True)
    table["store_row"] = np.arange(len(table))
    log.info("%s: %d fit, %d valid, %d test sites; valid experiments %s", cell_line,
             *(int((table["role"] == r).sum()) for r in ("fit", "valid", "test")), ", ".join(valid))
    return table


def decode_sites(model_sites: pd.DataFrame, raw_site_images: PngSites, training: dict) -> DecodeJob:
    """What the image store must hold: every site of the table, in ``store_row`` order, at training size.

    The store dataset decodes it once (and reuses or resumes it on later runs).
    """
    prefixes = model_sites.sort_values("store_row")["w1"].str.slice(0, -len("_w1.png"))
    return DecodeJob(raw_site_images, tuple(prefixes), int(training["image_size"]))


def plate_statistics(model_sites: pd.DataFrame, site_images: ImageStore) -> pd.DataFrame:
    """Per-plate channel mean and std over all of the plate's own sites (no labels used), from the
    per-site moments the image store gathered while decoding."""
    moments = site_images.moments
    n_plates = int(model_sites["plate_index"].max()) + 1
    plate_of = model_sites["plate_index"].to_numpy()[np.argsort(model_sites["store_row"].to_numpy())]
    total = np.zeros((n_plates, N_CHANNELS))
    squares = np.zeros((n_plates, N_CHANNELS))
    np.add.at(total, plate_of, moments[:, 0])
    np.add.at(squares, plate_of, moments[:, 1])
    count = np.bincount(plate_of, minlength=n_plates).astype(float)
    mean = total / count[:, None]
    std = np.sqrt(np.maximum(squares / count[:, None] - mean**2, 0))
    stats = model_sites[["experiment", "plate", "plate_index"]].drop_duplicates().sort_values("plate_index")
    stats = stats.reset_index(drop=True)
    stats[STAT_COLUMNS] = np.hstack([mean, std])
    return stats


def sites_to_fit(model_sites: pd.DataFrame, controls: str, final_fit: bool = False) -> pd.DataFrame:
    """The sites the model is fitted on: every labelled site of the fit experiments and, with ``controls``
    = ``all_experiments``, the control wells of the validation and test experiments too (their labels
    are public), so the model also sees the plates it will predict. Controls are classes of the model
    but never answers: inference keeps the treatment classes only.

    ``final_fit`` adds the validation experiments (the submission models, trained on every labelled
    experiment; their validation figures are then on training data)."""
    fit = model_sites["role"].isin(["fit", "valid"] if final_fit else ["fit"])
    if controls == "all_experiments":
        fit |= (model_sites["well_type"] != "treatment") & (model_sites["class_index"] >= 0)
    return model_sites[fit]


def train_model(model_sites: pd.DataFrame, site_images: ImageStore, plate_stats: pd.DataFrame,
                classes: pd.DataFrame, checkpoints, cell_line: str, training: dict
                ) -> tuple[dict, pd.DataFrame]:
    """Train the embedding model on the fit sites, resuming from the last checkpoint of the same setup;
    in this process, or on ``training.distributed.nproc_per_node`` DDP processes.

    ``training.controls`` chooses which control wells are fitted (:func:`sites_to_fit`).

    Returns the trained model (settings + weights) and the per-epoch history.
    """
    from rxrx1_pipeline.nn import distributed, loops
    from rxrx1_pipeline.nn.training import TrainJob, fit

    fit_sites = sites_to_fit(model_sites, training["controls"], training["final_fit"])
    if training["final_fit"]:
        log.warning("%s: final fit: the validation experiments are trained on too, so their figures are no "
                    "longer a validation", cell_line)
    valid = model_sites[(model_sites["role"] == "valid") & (model_sites["well_type"] == "treatment")]
    settings = {k: v for k, v in training.items() if k not in RUNTIME_ONLY}
    if training["epochs"] < 1:
        raise ValueError(f"{cell_line}: training.epochs must be >= 1, got {training['epochs']}")
    # Everything that changes the trained model: settings, fit wells and their labels, the pixels (the
    # store's identity covers the source folder, image size and a fingerprint of the files), the code.
    run_id = loops.fingerprint({"settings": settings, "fit": fit_sites["id_code"].tolist(),
                                "labels": fit_sites["class_index"].tolist(), "classes": len(classes),
                                "images": site_images.job, "code": loops.code_version()})
    job = TrainJob(cell_line, run_id, training, settings, fit_sites, valid, site_images, plate_stats,
                   len(classes), checkpoints)
    spread = training.get("distributed") or {}
    nproc, nnodes = distributed.processes(spread.get("nproc_per_node", 1)), spread.get("nnodes", 1)
    if nproc == 1 and nnodes == 1:
        model, history = fit(job)
    else:
        model, history = distributed.train(job, nproc, nnodes, spread.get("rdzv_endpoint"))
    return model, pd.DataFrame(history)
