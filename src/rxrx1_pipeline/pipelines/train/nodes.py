"""Per-cell-line embedding training: splits, the decode-once image store, plate statistics, training, curves."""

from __future__ import annotations

import logging
import time

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

# Settings that do not change the trained model, left out of its fingerprint and checkpoint.
RUNTIME_ONLY = ("num_workers",)


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


def train_model(model_sites: pd.DataFrame, site_images: ImageStore, plate_stats: pd.DataFrame,
                classes: pd.DataFrame, checkpoints, cell_line: str, training: dict
                ) -> tuple[dict, pd.DataFrame]:
    """Train the embedding model on the fit sites, resuming from the last checkpoint of the same setup.

    Returns the trained model (settings + weights) and the per-epoch history.
    """
    import torch

    from rxrx1_pipeline.nn import loops
    from rxrx1_pipeline.nn.checkpoints import model_checkpoint
    from rxrx1_pipeline.nn.data import StoreSites, loader
    from rxrx1_pipeline.nn.network import build_network, normaliser_from_stats

    fit = model_sites[model_sites["role"] == "fit"]
    valid = model_sites[(model_sites["role"] == "valid") & (model_sites["well_type"] == "treatment")]
    settings = {k: v for k, v in training.items() if k not in RUNTIME_ONLY}
    # Everything that changes the trained model: settings, fit wells and their labels, the pixels (the
    # store's identity covers the source folder, image size and a fingerprint of the files), the code.
    run_id = loops.fingerprint({"settings": settings, "fit": fit["id_code"].tolist(),
                                "labels": fit["class_index"].tolist(), "classes": len(classes),
                                "images": site_images.job, "code": loops.code_version()})
    epochs, batch, workers = training["epochs"], training["batch_size"], training["num_workers"]
    if epochs < 1:
        raise ValueError(f"{cell_line}: training.epochs must be >= 1, got {epochs}")

    generator = loops.seed_everything(training["seed"])
    net = build_network(training, len(classes)).to(loops.device())
    norm = normaliser_from_stats(training["normalization"], plate_stats)
    opt, sched = loops.optimiser(net, training, steps_per_epoch=-(-len(fit) // batch))
    start, history = checkpoints.restore(run_id, net, opt, sched, generator, cell_line)
    if start >= epochs:
        log.info("%s: the checkpoint already holds all %d epochs of these settings and data; reusing it "
                 "(delete it to retrain)", cell_line, start)

    fit_data = loader(StoreSites(site_images, fit["store_row"].to_numpy(), fit["class_index"].to_numpy()),
                      batch, workers, shuffle=True, generator=generator)
    fit_plates = torch.from_numpy(fit["plate_index"].to_numpy(copy=True))
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        try:
            loss, accuracy = loops.run_epoch(net, norm, opt, sched, fit_data, fit_plates,
                                             f"{cell_line} epoch {epoch + 1}/{epochs}")
        except FloatingPointError as exc:
            raise FloatingPointError(f"{exc}; training stopped: the model is not saved and the last checkpoint "
                                     f"({checkpoints.path}) is untouched; lower training.lr or check the "
                                     "inputs") from exc
        row = {"epoch": epoch + 1, "loss": loss, "fit_accuracy": accuracy,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        every = training["validate_every"]
        if len(valid) and every and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            row["valid_site_accuracy"] = loops.site_accuracy(net, norm, site_images, valid, batch, workers)
        history.append(row)
        log.info("%s epoch %d/%d: loss %.3f, fit acc %.3f%s (%.1fs)", cell_line, epoch + 1, epochs,
                 row["loss"], row["fit_accuracy"],
                 f", valid site acc {row['valid_site_accuracy']:.3f}" if "valid_site_accuracy" in row else "",
                 row["seconds"])
        checkpoints.save(run_id, epoch + 1, net, opt, sched, generator, history)
    return model_checkpoint(net, settings, len(classes)), pd.DataFrame(history)
