"""Metadata ingestion: the download's metadata (either layout) -> wells, test labels where the download has
them, sites and the model class index (no pixels read)."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_class_index, build_sites, ingest_download


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(ingest_download, "raw_metadata", ["wells", "test_labels", "data_layout"], name="build_wells"),
        Node(build_sites, ["wells", "data_layout"], "sites", name="build_sites"),
        Node(build_class_index, "wells", "classes", name="build_class_index"),
    ])
