"""Training: one template pipeline, instantiated per cell line as a namespace, and the shared model of
every cell line (its own node) that per-cell-line models may be fine-tuned from."""

from kedro.pipeline import Node, Pipeline

from rxrx1_pipeline.plates import CELL_LINES

from .nodes import (
    decode_sites,
    plate_statistics,
    select_sites,
    train_model,
    train_shared_model,
)

SHARED_INPUTS = {"wells", "sites", "classes", "raw_site_images", "shared_model", "sirna_groups", "plate_layouts"}


def create_template() -> Pipeline:
    """Nodes of one cell line; ``params:cell_line`` and ``params:training`` resolve inside its namespace."""
    return Pipeline([
        Node(select_sites, ["wells", "sites", "classes", "params:cell_line", "params:training"], "model_sites",
             name="select_sites"),
        Node(decode_sites, ["model_sites", "raw_site_images", "params:training"], "site_images",
             name="decode_sites"),
        Node(plate_statistics, ["model_sites", "site_images"], "plate_stats", name="plate_statistics"),
        Node(train_model, ["model_sites", "site_images", "plate_stats", "classes", "checkpoints",
                           "params:cell_line", "params:training", "shared_model", "sirna_groups", "plate_layouts"],
             ["model", "history", "pseudo_labels"], name="train_model"),
    ])


def create_pipeline(**kwargs) -> Pipeline:
    per_line = sum((Pipeline(create_template(), namespace=cl, inputs=SHARED_INPUTS, tags=[cl])
                    for cl in CELL_LINES), start=Pipeline([]))
    shared = Pipeline([
        Node(train_shared_model, ["classes", "shared_checkpoints", "params:shared_training",
                                  *[f"{cl}.{name}" for cl in CELL_LINES
                                    for name in ("model_sites", "site_images", "plate_stats")]],
             ["shared_model", "shared_history"], name="train_shared_model"),
    ])
    return per_line + shared
