"""Scoring new experiments: the inference side of a trained run, from a table of new sites (``new_sites``,
``pipelines/score/sites.py``) to one row per well (``scored_wells``). Its other inputs are the run's trained
models and artefacts (classes, siRNA groups, candidate layouts, its validation logits and wells, for the
assignment temperature); the ``full`` pipeline logs it with them as an MLflow model (pipeline_registry)."""

from kedro.pipeline import Node, Pipeline

from rxrx1_pipeline.leak.assignment import assign_wells, fit_temperature, infer_layouts
from rxrx1_pipeline.leak.plates import CELL_LINES

from .nodes import prepare_new_sites, score_cell_line, scored_wells, stack_cell_lines

INPUT = "new_sites"


def create_template() -> Pipeline:
    return Pipeline([
        Node(score_cell_line, ["model", "scoring_sites", "classes", "params:cell_line", "params:inference",
                               "params:images"], ["scoring_logits", "scoring_embeddings"], name="score_cell_line"),
    ])


def create_pipeline(**kwargs) -> Pipeline:
    per_line = sum((Pipeline(create_template(), namespace=cl, inputs={"scoring_sites", "classes"},
                             parameters={"inference", "images"}) for cl in CELL_LINES), start=Pipeline([]))
    return per_line + Pipeline([
        Node(prepare_new_sites, [INPUT, "sirna_groups"], ["scoring_sites", "scoring_wells"], name="prepare_new_sites"),
        *[Node(stack_cell_lines, [f"{cl}.scoring_{name}" for cl in CELL_LINES], f"scoring_{name}",
               name=f"stack_scoring_{name}") for name in ("logits", "embeddings")],
        Node(infer_layouts, ["scoring_logits", "scoring_wells", "sirna_groups", "plate_layouts",
                             "params:postprocess.rotation"], "scoring_layouts", name="infer_scoring_layouts"),
        # the temperature of this run's own validation logits (the run's postprocess_calibration is fitted on the
        # ensemble's when it has members; the scoring model scores with this run's models alone)
        Node(fit_temperature, ["valid_logits", "wells", "sirna_groups", "params:postprocess.assignment"],
             "scoring_calibration", name="fit_scoring_temperature"),
        Node(assign_wells, ["scoring_logits", "scoring_wells", "sirna_groups", "scoring_layouts",
                            "scoring_calibration", "params:postprocess.assignment"], "scoring_predictions",
             name="assign_scoring_wells"),
        Node(scored_wells, ["scoring_predictions", "scoring_layouts", "scoring_logits", "scoring_embeddings",
                            "scoring_wells"], "scored_wells", name="scored_wells"),
    ])
