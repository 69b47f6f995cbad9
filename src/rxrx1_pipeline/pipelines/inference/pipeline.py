"""Inference per cell line (namespaces), then the cell lines combined into the cached-logits files."""

from kedro.pipeline import Node, Pipeline

from rxrx1_pipeline.leak.plates import CELL_LINES
from rxrx1_pipeline.nn.wells import combine_cell_lines

from .nodes import predict_wells

OUTPUTS = ["valid_logits", "test_logits", "valid_embeddings", "test_embeddings"]


def create_template() -> Pipeline:
    return Pipeline([
        Node(predict_wells, ["model", "model_sites", "site_images", "plate_stats", "classes",
                             "params:cell_line", "params:inference"],
             OUTPUTS, name="predict_wells"),
    ])


def create_pipeline(**kwargs) -> Pipeline:
    per_line = [Pipeline(create_template(), namespace=cl, inputs={"classes"}, parameters={"inference"},
                         tags=[cl]) for cl in CELL_LINES]
    combine = Pipeline([Node(combine_cell_lines, [f"{cl}.{name}" for cl in CELL_LINES], name,
                             name=f"combine_{name}") for name in OUTPUTS])
    return sum(per_line, start=combine)
