"""Generate the embedded synthetic dataset under synthetic_root (the default data_root), in the real RxRx1 layout."""

from kedro.pipeline import Node, Pipeline

from .nodes import design_plates, package_download, render_sites

TABLES = [f"synthetic_{name}_table" for name in ("train", "test", "train_controls", "test_controls")]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(design_plates, "params:synthetic", [*TABLES, "synthetic_truth"], name="design_synthetic_plates"),
        Node(package_download, [*TABLES, "synthetic_truth", "params:synthetic"], "synthetic_metadata",
             name="write_synthetic_metadata"),
        Node(render_sites, ["synthetic_truth", "params:synthetic"], "synthetic_site_images",
             name="render_synthetic_sites"),
    ])
