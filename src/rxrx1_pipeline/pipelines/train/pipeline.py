"""Training: two template pipelines (a cell line's model inputs, then its model), each instantiated per cell
line as a namespace, and the shared model of every cell line (its own node) that per-cell-line models may be
fine-tuned from. ``full`` puts the inputs and the models in two stages (``pipeline_registry``)."""

from kedro.pipeline import Node, Pipeline

from rxrx1_pipeline.leak.plates import CELL_LINES
from rxrx1_pipeline.storage.images import plate_statistics

from .nodes import LINE_INPUTS, LINE_PARAMS, decode_sites, select_sites, train_model, train_shared_model


def create_inputs_template() -> Pipeline:
    """One cell line's model inputs: its sites, their image store and plate statistics."""
    return Pipeline([
        Node(select_sites, ["wells", "sites", "classes", "params:cell_line", "params:training", "heldout_copies"],
             "model_sites", name="select_sites"),
        Node(decode_sites, ["model_sites", "raw_site_images", "params:training", "params:images"], "site_images",
             name="decode_sites"),
        Node(plate_statistics, ["model_sites", "site_images"], "plate_stats", name="plate_statistics"),
    ])


def create_training_template() -> Pipeline:
    """One cell line's model, trained on its inputs (from scratch or fine-tuned from the shared model)."""
    return Pipeline([
        Node(train_model, ["model_sites", "site_images", "plate_stats", "classes", "checkpoints",
                           "params:cell_line", "params:training", "shared_model", "sirna_groups", "plate_layouts"],
             ["model", "history", "pseudo_labels"], name="train_model"),
    ])


def per_line(template: Pipeline, shared_inputs: set[str], shared_params: frozenset[str] = frozenset()) -> Pipeline:
    """``template`` once per cell line, as the namespace of that line (``params:training`` resolves inside);
    ``shared_inputs`` are the datasets and ``shared_params`` the parameters every line reads under their own
    names."""
    return sum((Pipeline(template, namespace=cl, inputs=shared_inputs, parameters=set(shared_params), tags=[cl])
                for cl in CELL_LINES), start=Pipeline([]))


def create_inputs_pipeline() -> Pipeline:
    return per_line(create_inputs_template(), {"wells", "sites", "classes", "raw_site_images", "heldout_copies"},
                    frozenset({"images"}))


def create_training_pipeline() -> Pipeline:
    """Each cell line's model and the shared model of every cell line, which reads all lines' inputs."""
    shared = Pipeline([
        Node(train_shared_model, {"classes": "classes", "checkpoints": "shared_checkpoints",
                                  "training": "params:shared_training", "sirna_groups": "sirna_groups",
                                  "plate_layouts": "plate_layouts",
                                  **{f"{cl}_{name}": f"{cl}.{name}" for cl in CELL_LINES for name in LINE_INPUTS},
                                  **{f"{cl}_{name}": f"params:{cl}.{name}"
                                     for cl in CELL_LINES for name in LINE_PARAMS}},
             ["shared_model", "shared_history", "shared_pseudo_labels"], name="train_shared_model"),
    ])
    per_line_models = per_line(create_training_template(), {"classes", "shared_model", "sirna_groups", "plate_layouts"})
    return per_line_models + shared


def create_pipeline(**kwargs) -> Pipeline:
    return create_inputs_pipeline() + create_training_pipeline()
