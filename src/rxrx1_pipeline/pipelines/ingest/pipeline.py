"""Metadata ingestion: four CSVs -> wells, sites and the model class index (no pixels read)."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_class_index, build_sites, build_wells


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(build_wells,
             ["raw_train_csv", "raw_test_csv", "raw_train_controls_csv", "raw_test_controls_csv"],
             "wells", name="build_wells"),
        Node(build_sites, "wells", "sites", name="build_sites"),
        Node(build_class_index, "wells", "classes", name="build_class_index"),
    ])
