"""Reporting: the cell lines' training curves in one chart, and report.html (runs on persisted outputs)."""

from kedro.pipeline import Node, Pipeline

from rxrx1_pipeline.leak.plates import CELL_LINES

from .nodes import build_report, plot_training_curves


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(plot_training_curves, ["shared_history", *[f"{cl}.history" for cl in CELL_LINES]], "training_curves",
             name="plot_training_curves"),
        Node(build_report, ["run_identity", "postprocess_metrics", "training_curves", "postprocess_chart",
                            "valid_plate_groups", "test_plate_groups", "copied_experiments", "test_metrics",
                            "valid_predictions", "wells", "sites", "raw_site_images"],
             "report", name="build_report"),
    ])
