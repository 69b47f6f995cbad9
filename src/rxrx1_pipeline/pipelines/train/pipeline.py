"""Training: one template pipeline, instantiated per cell line as a namespace."""

from kedro.pipeline import Node, Pipeline

from rxrx1_pipeline.plates import CELL_LINES

from .nodes import (
    decode_sites,
    plate_statistics,
    select_sites,
    train_model,
)

SHARED_INPUTS = {"wells", "sites", "classes", "raw_site_images"}


def create_template() -> Pipeline:
    """Nodes of one cell line; ``params:cell_line`` and ``params:training`` resolve inside its namespace."""
    return Pipeline([
        Node(select_sites, ["wells", "sites", "classes", "params:cell_line", "params:training"], "model_sites",
             name="select_sites"),
        Node(decode_sites, ["model_sites", "raw_site_images", "params:training"], "site_images",
             name="decode_sites"),
        Node(plate_statistics, ["model_sites", "site_images"], "plate_stats", name="plate_statistics"),
        Node(train_model, ["model_sites", "site_images", "plate_stats", "classes", "checkpoints",
                           "params:cell_line", "params:training"],
             ["model", "history"], name="train_model"),
    ])


def create_pipeline(**kwargs) -> Pipeline:
    return sum((Pipeline(create_template(), namespace=cl, inputs=SHARED_INPUTS, tags=[cl])
                for cl in CELL_LINES), start=Pipeline([]))
