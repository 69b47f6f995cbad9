"""Generate the embedded synthetic dataset under synthetic_root (the default data_root), in the real RxRx1 layout."""

from kedro.pipeline import Node, Pipeline

from .nodes import design_plates, render_sites


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(design_plates, "params:synthetic",
             ["synthetic_train_csv", "synthetic_test_csv", "synthetic_train_controls_csv",
              "synthetic_test_controls_csv", "synthetic_truth"], name="design_synthetic_plates"),
        Node(render_sites, ["synthetic_truth", "params:synthetic"], "synthetic_site_images",
             name="render_synthetic_sites"),
    ])
