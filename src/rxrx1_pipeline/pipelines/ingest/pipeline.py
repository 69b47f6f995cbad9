"""Metadata ingestion: four CSVs -> wells.parquet and sites.parquet (no pixels read)."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_sites, build_wells


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(build_wells,
             ["raw_train_csv", "raw_test_csv", "raw_train_controls_csv", "raw_test_controls_csv"],
             "wells", name="build_wells"),
        Node(build_sites, "wells", "sites", name="build_sites"),
    ])
