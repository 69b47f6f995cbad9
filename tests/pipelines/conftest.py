"""A tiny synthetic dataset on disk, its image store and tiny settings, shared by the train and inference tests."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from rxrx1_pipeline.kedro_io.datasets import ImageStoreDataset, SiteImagesDataset
from rxrx1_pipeline.pipelines.ingest.nodes import (
    build_class_index,
    build_sites,
    build_wells,
)
from rxrx1_pipeline.pipelines.synthetic.nodes import design_plates, render_sites
from rxrx1_pipeline.storage.images import plate_statistics
from rxrx1_pipeline.pipelines.train.nodes import (
    decode_sites,
    select_sites,
)
from rxrx1_pipeline.schema import ImageSource, Inference, Synthetic, Training

TINY_SYNTHETIC = {
    "seed": 3, "image_size": 16, "cell_lines": ["HEPG2"], "experiments": {"train": 3, "test": 1},
    "sirnas_per_group": 3, "positive_controls": 1, "missing_well_rate": 0.0, "phenotype_strength": 1.5,
    "cell_line_specificity": 0.3, "batch_strength": 0.3, "noise": 0.3,
}
TINY_TRAINING_VALUES = {
    "valid_experiments": 1, "arch": "test_resnet", "pretrained_weights": None, "image_size": 16,
    "embedding_dim": 16, "head": "cosface", "margin": 0.1, "scale": 16.0, "normalization": "plate",
    "epochs": 2, "batch_size": 16, "lr": 0.003, "weight_decay": 0.0, "seed": 0, "validate_every": 1,
    "num_workers": 0, "channels_last": True, "controls": "train_experiments",
    "final_fit": False, "init": "scratch", "batches": "mixed",
}
TINY_TRAINING = Training.model_validate(TINY_TRAINING_VALUES)
TINY_INFERENCE = Inference.model_validate({"tta": 2, "batch_size": 16, "num_workers": 0, "batchnorm": "trained",
                                           "plate_centring": False})


def changed(block: BaseModel, changes: dict, as_type: type[BaseModel] | None = None) -> BaseModel:
    """``block`` with ``changes``, checked as a parameter block (of ``as_type``, default its own type) the way
    Kedro checks a node's typed ``params:`` argument."""
    return (as_type or type(block)).model_validate({**block.model_dump(), **changes})


@pytest.fixture(scope="package")
def tiny_data(tmp_path_factory):
    """(PNG reader, wells, sites, classes) of a one-cell-line synthetic dataset written as PNGs."""
    root = tmp_path_factory.mktemp("rxrx1")
    synthetic = Synthetic.model_validate(TINY_SYNTHETIC)
    train, test, train_controls, test_controls, truth = design_plates(synthetic)
    images = SiteImagesDataset(path=str(root), workers=1)
    images.save(render_sites(truth, synthetic))
    wells = build_wells(train, test, train_controls, test_controls)
    return images.load(), wells, build_sites(wells), build_class_index(wells)


@pytest.fixture(scope="package")
def prepared(tiny_data, tmp_path_factory):
    """(classes, model_sites, image store, plate stats) of HEPG2, as the train pipeline's first nodes make them."""
    reader, wells, sites, classes = tiny_data
    model_sites = select_sites(wells, sites, classes, "HEPG2", TINY_TRAINING)
    store = ImageStoreDataset(path=str(Path(tmp_path_factory.mktemp("store")) / "HEPG2"), workers=1)
    store.save(decode_sites(model_sites, reader, TINY_TRAINING, ImageSource()))
    images = store.load()
    return classes, model_sites, images, plate_statistics(model_sites, images)


@pytest.fixture
def tiny_training():
    return TINY_TRAINING
