"""Scoring new experiments with a trained run's models and fitted artefacts, exactly as the run's own test
experiments were scored: per cell line the sites' images at the model's size, their plate statistics, the
well logits and embeddings (``WellScorer``); then the experiment's layout posterior and the balanced
assignment (the post-processing nodes)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rxrx1_pipeline.leak.assignment import plate_group_of_wells
from rxrx1_pipeline.nn.wells import WellScorer, combine_cell_lines
from rxrx1_pipeline.schema import ImageSource, Inference
from rxrx1_pipeline.storage.images import (
    N_CHANNELS,
    MemoryStore,
    PngSites,
    check_pngs,
    plate_statistics,
    read_fitted,
)

from .sites import ScoringInputError, check_new_sites, check_treatment_counts

log = logging.getLogger(__name__)


def prepare_new_sites(new_sites: pd.DataFrame, sirna_groups: pd.DataFrame | None = None
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The input table checked (``sites.check_new_sites``; with ``sirna_groups``, no plate with more treatment
    wells than a plate group has siRNAs), and its wells in the format of ``wells`` (siRNA unknown) for the
    post-processing nodes."""
    sites = check_new_sites(new_sites)
    if sirna_groups is not None:
        check_treatment_counts(sites, sirna_groups)
    wells = sites.drop_duplicates("id_code")[["id_code", "experiment", "cell_line", "plate", "well", "well_type"]]
    wells = wells.assign(sirna=pd.array([pd.NA] * len(wells), dtype="Int64")).reset_index(drop=True)
    counts = wells.groupby("experiment")["well_type"].apply(lambda t: (t == "treatment").sum())
    log.info("Scoring %d treatment wells (%d sites in all) of %d experiment(s): %s", int(counts.sum()), len(sites),
             len(counts), ", ".join(f"{e} ({n} wells)" for e, n in counts.items()))
    return sites, wells


def score_cell_line(model: dict, scoring_sites: pd.DataFrame, classes: pd.DataFrame, cell_line: str,
                    inference: Inference, images: ImageSource) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Logits and embeddings of this cell line's treatment wells among the new sites (empty tables when it has
    none: no image is read then). The sites are read at the model's image size and fit, and every site of a
    plate, controls too, gives that plate's statistics, as when the model's own store was built."""
    sites = scoring_sites[scoring_sites["cell_line"] == cell_line].reset_index(drop=True)
    if not (sites["well_type"] == "treatment").any():
        return pd.DataFrame(), pd.DataFrame()
    if not model:
        raise ScoringInputError(f"the sites table holds {cell_line} sites (e.g. {sites['image_prefix'].iloc[0]}) but "
                                f"the run trained no {cell_line} model: its data set had no {cell_line} wells")
    size = model["settings"]["image_size"]
    reader = PngSites(Path("."))  # prefixes are absolute or relative to the working directory
    check_pngs(reader, sites["image_prefix"])  # every header: 8-bit, one resolution, before a pixel is read
    pixels = np.empty((len(sites), N_CHANNELS, size, size), np.uint8)
    for row, prefix in enumerate(tqdm(sites["image_prefix"], desc=f"{cell_line}: reading sites", unit="site",
                                      mininterval=1, disable=None)):
        pixels[row] = read_fitted(reader, prefix, size, images.fit)
    sites["store_row"] = np.arange(len(sites))
    plates = sites[["experiment", "plate"]].drop_duplicates().reset_index(drop=True)
    plates["plate_index"] = np.arange(len(plates))
    sites = sites.merge(plates, on=["experiment", "plate"]).sort_values("store_row", ignore_index=True)
    store = MemoryStore(pixels)
    scorer = WellScorer(model, store, plate_statistics(sites, store), classes, cell_line, inference)
    logits, embeddings = scorer.score(sites, sites[sites["well_type"] == "treatment"])
    log.info("%s: logits for %d wells from %d sites (%d plates)", cell_line, len(logits), len(sites), len(plates))
    return logits, embeddings


def stack_cell_lines(*tables: pd.DataFrame) -> pd.DataFrame:
    """The cell lines' tables in one, sorted by id_code (lines without sites left out)."""
    return combine_cell_lines(*[t for t in tables if not t.empty])


def scored_wells(predictions: pd.DataFrame, layouts: pd.DataFrame, logits: pd.DataFrame, embeddings: pd.DataFrame,
                 wells: pd.DataFrame) -> pd.DataFrame:
    """One row per treatment well: where it is, the siRNA called after each stage (``sirna`` the balanced
    assignment, as in the submission; ``sirna_masked``, ``sirna_argmax``) and its ``score``; its experiment's
    ``layout``, ``layout_confidence`` and ``posterior_<layout>`` for every candidate, the ``plate_group`` that
    layout puts on its plate; then ``logit_<siRNA>`` and the embedding ``e0``, ``e1``, ..."""
    table = predictions.rename(columns={"sirna_assigned": "sirna"}).merge(
        wells[["id_code", "cell_line", "well"]], on="id_code", how="left")
    table["plate_group"] = plate_group_of_wells(table, layouts)
    posterior = [c for c in layouts.columns if c.startswith("posterior_")]
    table = table.merge(layouts[["experiment", "layout", "confidence", *posterior]]
                        .rename(columns={"confidence": "layout_confidence"}), on="experiment", how="left")
    columns = ["id_code", "experiment", "cell_line", "plate", "well", "sirna", "sirna_masked", "sirna_argmax", "score",
               "layout", "layout_confidence", "plate_group", *posterior]
    logits = logits.set_index("id_code").add_prefix("logit_")
    return table[columns].join(logits, on="id_code").join(embeddings.set_index("id_code"), on="id_code")
