"""Post-processing from cached logits: layout inference, masking, assignment, submission, metrics.

Runs on its own (`kedro run --pipelines=postprocess`): every input is a persisted catalog entry.
"""

from kedro.pipeline import Node, Pipeline

from rxrx1_pipeline.leak.assignment import assign_wells, fit_temperature, infer_layouts
from rxrx1_pipeline.leak.copies import find_copied_experiments

from .nodes import build_submission, ensemble_splits, evaluate, evaluate_test, plot_stage_accuracy

SPLITS = ("valid", "test")


def create_pipeline(**kwargs) -> Pipeline:
    nodes = [Node(ensemble_splits, ["valid_logits", "test_logits", "valid_logit_members", "test_logit_members"],
                  ["valid_ensemble_logits", "test_ensemble_logits"], name="ensemble_logits")]
    nodes += [Node(fit_temperature, ["valid_ensemble_logits", "wells", "sirna_groups", "params:postprocess.assignment"],
                   "postprocess_calibration", name="fit_assignment_temperature")]
    for split in SPLITS:
        nodes += [
            Node(infer_layouts,
                 [f"{split}_ensemble_logits", "wells", "sirna_groups", "plate_layouts", "params:postprocess.rotation"],
                 f"{split}_plate_groups", name=f"infer_{split}_layouts"),
            Node(assign_wells,
                 [f"{split}_ensemble_logits", "wells", "sirna_groups", f"{split}_plate_groups",
                  "postprocess_calibration", "params:postprocess.assignment"],
                 f"{split}_predictions", name=f"assign_{split}_wells"),
        ]
    nodes += [
        Node(find_copied_experiments, ["test_predictions", "wells", "params:postprocess.copies"],
             "copied_experiments", name="find_copied_experiments"),
        Node(build_submission, ["test_predictions", "copied_experiments", "wells"], "submission",
             name="build_submission"),
        Node(evaluate, ["valid_predictions", "valid_plate_groups", "wells", "train_plate_groups"],
             "postprocess_metrics", name="evaluate_postprocess"),
        Node(evaluate_test, ["test_predictions", "test_plate_groups", "submission", "test_labels", "wells",
                             "sirna_groups"], "test_metrics", name="evaluate_test"),
        Node(plot_stage_accuracy, "postprocess_metrics", "postprocess_chart", name="plot_stage_accuracy"),
    ]
    return Pipeline(nodes)
