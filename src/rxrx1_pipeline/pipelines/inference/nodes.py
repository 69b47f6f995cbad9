"""Two-site inference: per-well treatment logits and embeddings for the valid and test experiments."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from rxrx1_pipeline.images import ImageStore

log = logging.getLogger(__name__)


def predict_wells(model: dict, model_sites: pd.DataFrame, site_images: ImageStore, plate_stats: pd.DataFrame,
                  classes: pd.DataFrame, cell_line: str, inference: dict
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Logits and embeddings of the valid and test treatment wells, averaged over both sites.

    The model's shape (architecture, classes, image size, normalisation) comes from its checkpoint;
    ``inference`` sets only how it runs (TTA views, batch size, loader workers). Logits keep only the
    treatment classes, one float32 column per siRNA id: the cached-logits contract of post-processing.
    """
    from rxrx1_pipeline.nn.checkpoints import load_model
    from rxrx1_pipeline.nn.loops import device, embed_sites
    from rxrx1_pipeline.nn.network import normaliser_from_stats

    settings = model["settings"]
    if site_images.image_size != settings["image_size"]:
        raise ValueError(f"{cell_line}: the model was trained on {settings['image_size']} px images but the "
                         f"image store holds {site_images.image_size} px; re-run the train pipeline")
    net = load_model(model, device())
    norm = normaliser_from_stats(settings["normalization"], plate_stats)
    treatment = classes[classes["well_type"] == "treatment"].sort_values("sirna")
    columns = treatment["sirna"].astype(str).tolist()
    outputs = []
    for role in ("valid", "test"):
        sites = model_sites[(model_sites["role"] == role) & (model_sites["well_type"] == "treatment")]
        logits, emb = embed_sites(net, norm, site_images, sites, inference["batch_size"],
                                  inference["num_workers"], tta=inference["tta"])
        logits = logits[:, treatment["class_index"].to_numpy()]
        outputs.append(per_well(sites["id_code"], logits, columns))
        outputs.append(per_well(sites["id_code"], emb, [f"e{i}" for i in range(emb.shape[1])]))
        log.info("%s: %s logits for %d wells from %d sites", cell_line, role, outputs[-1].shape[0], len(sites))
    valid_logits, valid_emb, test_logits, test_emb = outputs
    return valid_logits, test_logits, valid_emb, test_emb


def per_well(id_codes: pd.Series, values: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """Average site rows into one float32 row per well: ``id_code`` then ``columns``."""
    codes, inverse = np.unique(id_codes.to_numpy(), return_inverse=True)
    sums = np.zeros((len(codes), values.shape[1]))
    np.add.at(sums, inverse, values)
    mean = (sums / np.bincount(inverse)[:, None]).astype(np.float32)
    frame = pd.DataFrame(mean, columns=columns)
    frame.insert(0, "id_code", codes)
    return frame


def combine_cell_lines(*tables: pd.DataFrame) -> pd.DataFrame:
    """Stack the per-cell-line tables into one, sorted by id_code."""
    return pd.concat(tables, ignore_index=True).sort_values("id_code", ignore_index=True)
