"""Per-well logits and embeddings of a trained model: the scorer that the inference pipeline and the scoring
model share (torch imported when a scorer is made)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rxrx1_pipeline.leak.kernels import combine_rows
from rxrx1_pipeline.schema import Inference
from rxrx1_pipeline.storage.images import ImageStore


class WellScorer:
    """One cell line's trained model over one image store: per-well logits and embeddings of chosen sites.

    Shared by the pipeline's inference and the scoring model (``pipelines/score``), so a new experiment is
    scored exactly as the run's own test experiments were."""

    def __init__(self, model: dict, site_images: ImageStore, plate_stats: pd.DataFrame, classes: pd.DataFrame,
                 cell_line: str, inference: Inference):
        from rxrx1_pipeline.nn.checkpoints import load_model
        from rxrx1_pipeline.nn.loops import device, flush_subnormals
        from rxrx1_pipeline.nn.network import normaliser_from_stats

        self.settings = model["settings"]
        if site_images.image_size != self.settings["image_size"]:
            raise ValueError(f"{cell_line}: the model was trained on {self.settings['image_size']} px images but "
                             f"the image store holds {site_images.image_size} px; re-run the train pipeline")
        flush_subnormals()
        self.net = load_model(model, device())
        self.norm = normaliser_from_stats(self.settings["normalization"], plate_stats)
        self.store, self.inference, self.cell_line = site_images, inference, cell_line
        treatment = classes[classes["well_type"] == "treatment"].sort_values("sirna")
        self.class_index = treatment["class_index"].to_numpy()
        self.columns = treatment_columns(classes)

    def score(self, all_sites: pd.DataFrame, sites: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(logits, embeddings) per well of ``sites``; ``all_sites`` holds every site of their plates (what
        ``batchnorm: per_plate`` re-estimates the statistics on)."""
        from rxrx1_pipeline.nn.loops import adapt_batchnorm, class_logits, embed_sites

        if sites.empty:  # e.g. a cell line without test wells
            return no_wells(self.columns, self.settings["embedding_dim"])
        net, norm, inference = self.net, self.norm, self.inference
        batch, workers, tta = inference.batch_size, inference.num_workers, inference.tta
        if inference.batchnorm == "per_plate":
            trained = {k: v.clone() for k, v in net.state_dict().items()}
            plate_of = sites["plate_index"].to_numpy()
            emb = np.empty((len(sites), self.settings["embedding_dim"]), np.float32)
            for plate in np.unique(plate_of):
                rows = np.flatnonzero(plate_of == plate)
                own = all_sites[all_sites["plate_index"] == plate]
                if len(own) < 2:
                    raise ValueError(f"{self.cell_line}: inference.batchnorm is 'per_plate' but plate "
                                     f"{own['experiment'].iloc[0]} plate {own['plate'].iloc[0]} has 1 site: BatchNorm "
                                     "statistics cannot be estimated on one site; give every site of the plate "
                                     "(controls too) or set inference.batchnorm: trained")
                adapt_batchnorm(net, norm, self.store, own, batch, workers)
                emb[rows] = embed_sites(net, norm, self.store, sites.iloc[rows], batch, workers, tta)
            net.load_state_dict(trained)
        else:
            emb = embed_sites(net, norm, self.store, sites, batch, workers, tta)
        if inference.plate_centring:
            emb = centre_plates(emb, sites["plate_index"].to_numpy())
        logits = class_logits(net, emb)[:, self.class_index]
        return (per_well(sites["id_code"], logits, self.columns, inference.sites),
                per_well(sites["id_code"], emb, [f"e{i}" for i in range(emb.shape[1])]))


def no_wells(columns: list[str], embedding_dim: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (logits, embeddings) tables of no well: an id_code column, then the logits' siRNA ``columns`` and
    ``embedding_dim`` embedding columns (float32)."""
    ids = pd.Series([], dtype=object)
    return (per_well(ids, np.empty((0, len(columns)), np.float32), columns),
            per_well(ids, np.empty((0, embedding_dim), np.float32), [f"e{i}" for i in range(embedding_dim)]))


def treatment_columns(classes: pd.DataFrame) -> list[str]:
    """The logits' columns: the treatment siRNA ids in order, as text."""
    return classes.loc[classes["well_type"] == "treatment", "sirna"].sort_values().astype(str).tolist()


def centre_plates(embeddings: np.ndarray, plates: np.ndarray) -> np.ndarray:
    """Each plate's embeddings shifted so that the plate's mean becomes the mean over all plates."""
    out = embeddings.astype(np.float64)
    overall = out.mean(0)
    for plate in np.unique(plates):
        mine = plates == plate
        out[mine] += overall - out[mine].mean(0)
    return out.astype(np.float32)


def per_well(id_codes: pd.Series, values: np.ndarray, columns: list[str], how: str = "mean") -> pd.DataFrame:
    """Average (``how`` mean) or sum the site rows into one float32 row per well: ``id_code`` then ``columns``."""
    codes, combined = combine_rows(id_codes.to_numpy(), values, how)
    frame = pd.DataFrame(combined, columns=columns)
    frame.insert(0, "id_code", codes)
    return frame


def combine_cell_lines(*tables: pd.DataFrame) -> pd.DataFrame:
    """Stack the per-cell-line tables into one, sorted by id_code."""
    return pd.concat(tables, ignore_index=True).sort_values("id_code", ignore_index=True)
