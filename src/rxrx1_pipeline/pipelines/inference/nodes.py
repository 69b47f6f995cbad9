"""Two-site inference: per-well treatment logits and embeddings for the valid and test experiments."""

from __future__ import annotations

import logging

import pandas as pd

from rxrx1_pipeline.nn.wells import WellScorer, no_wells, treatment_columns
from rxrx1_pipeline.schema import Inference
from rxrx1_pipeline.storage.images import ImageStore

log = logging.getLogger(__name__)


def predict_wells(model: dict, model_sites: pd.DataFrame, site_images: ImageStore, plate_stats: pd.DataFrame,
                  classes: pd.DataFrame, cell_line: str, inference: Inference
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Logits and embeddings of the valid and test treatment wells, averaged over both sites.

    The model's shape (architecture, classes, image size, normalisation) comes from its checkpoint;
    ``inference`` sets how it runs (TTA views, batch size, loader workers) and two batch-effect
    corrections: ``batchnorm: per_plate`` re-estimates the BatchNorm statistics on each plate's own
    sites (all of them, controls included) before embedding that plate; ``plate_centring`` moves each
    plate's mean embedding onto the mean of all plates before the head. ``sites``: a well's logits are the
    mean or the sum of its sites' (a well with one site left then weighs half). Logits keep only the treatment
    classes, one float32 column per siRNA id: the cached-logits contract of post-processing.
    """
    if not model:  # a cell line without sites in this data set (train_model trained none)
        log.info("%s: no model (no sites of this cell line in the data set): no logits", cell_line)
        logits, embeddings = no_wells(treatment_columns(classes), 0)
        return logits, logits, embeddings, embeddings
    scorer = WellScorer(model, site_images, plate_stats, classes, cell_line, inference)
    scored = {}
    for role in ("valid", "test"):
        sites = model_sites[(model_sites["role"] == role) & (model_sites["well_type"] == "treatment")]
        scored[role] = scorer.score(model_sites, sites)
        log.info("%s: %s logits for %d wells from %d sites", cell_line, role, len(scored[role][0]), len(sites))
    (valid_logits, valid_emb), (test_logits, test_emb) = scored["valid"], scored["test"]
    return valid_logits, test_logits, valid_emb, test_emb

