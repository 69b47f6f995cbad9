"""A tiny synthetic dataset on disk and tiny model settings, shared by the train and inference tests."""

import pytest

from rxrx1_pipeline.datasets import SiteImagesDataset
from rxrx1_pipeline.pipelines.ingest.nodes import build_class_index, build_sites, build_wells
from rxrx1_pipeline.pipelines.synthetic.nodes import design_plates, render_sites

TINY_SYNTHETIC = {
    "seed": 3, "image_size": 16, "cell_lines": ["HEPG2"], "experiments": {"train": 3, "test": 1},
    "sirnas_per_group": 3, "positive_controls": 1, "missing_well_rate": 0.0, "phenotype_strength": 1.5,
    "cell_line_specificity": 0.3, "batch_strength": 0.3, "noise": 0.3,
}
TINY_MODEL = {
    "valid_experiments": 1, "arch": "test_resnet", "pretrained_weights": None, "image_size": 16,
    "embedding_dim": 16, "head": "cosface", "margin": 0.1, "scale": 16.0, "normalization": "plate",
    "epochs": 2, "batch_size": 16, "lr": 0.003, "weight_decay": 0.0, "seed": 0, "tta": 2,
    "validate_every": 1, "decoded_cache": True, "decoded_cache_max_gib": 1, "num_workers": 0,
}


@pytest.fixture(scope="package")
def tiny_data(tmp_path_factory):
    """(data_root, wells, sites, classes) of a one-cell-line synthetic dataset written as PNGs."""
    root = tmp_path_factory.mktemp("rxrx1")
    train, test, train_controls, test_controls, truth = design_plates(TINY_SYNTHETIC)
    SiteImagesDataset(path=str(root), workers=1).save(render_sites(truth, TINY_SYNTHETIC))
    wells = build_wells(train, test, train_controls, test_controls)
    return str(root), wells, build_sites(wells), build_class_index(wells)


@pytest.fixture
def tiny_model():
    return dict(TINY_MODEL)
