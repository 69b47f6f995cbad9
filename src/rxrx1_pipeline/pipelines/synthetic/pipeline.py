"""Generate the embedded synthetic dataset under data_root, in the real RxRx1 layout."""

from kedro.pipeline import Node, Pipeline

from .nodes import design_plates, render_sites


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(design_plates, "params:synthetic",
             ["raw_train_csv", "raw_test_csv", "raw_train_controls_csv", "raw_test_controls_csv",
              "synthetic_truth"], name="design_synthetic_plates"),
        Node(render_sites, ["synthetic_truth", "params:synthetic"], "raw_site_images",
             name="render_synthetic_sites"),
    ])
