"""A data set of one cell line (the tiny data set holds HEPG2 only): the other lines get an empty site table, no
model and no logits; the shared model is read only by lines fine-tuned from it, and trained only for them."""

from pathlib import Path

import pytest

from rxrx1_pipeline.kedro_io.datasets import ImageStoreDataset, TorchCheckpointDataset
from rxrx1_pipeline.pipelines.inference.nodes import predict_wells
from rxrx1_pipeline.pipelines.train.nodes import decode_sites, select_sites, train_model, train_shared_model
from rxrx1_pipeline.schema import ImageSource, SharedTraining
from rxrx1_pipeline.storage.checkpoints import CheckpointStore, ModelFile
from rxrx1_pipeline.storage.images import plate_statistics
from tests.pipelines.conftest import TINY_INFERENCE, TINY_TRAINING, changed
from tests.pipelines.train.test_levers import line_inputs


@pytest.fixture(scope="module")
def absent(tiny_data, tmp_path_factory):
    """HUVEC's (model_sites, image store, plate stats) in the HEPG2-only data set."""
    reader, wells, sites, classes = tiny_data
    model_sites = select_sites(wells, sites, classes, "HUVEC", TINY_TRAINING)
    store = ImageStoreDataset(path=str(tmp_path_factory.mktemp("store") / "HUVEC"), workers=1)
    store.save(decode_sites(model_sites, reader, TINY_TRAINING, ImageSource()))
    images = store.load()
    return model_sites, images, plate_statistics(model_sites, images)


def test_a_line_without_wells_gets_empty_inputs_no_model_and_no_logits(absent, prepared, tmp_path, caplog):
    import logging

    classes, hepg2_sites, _, _ = prepared
    model_sites, images, stats = absent
    assert model_sites.empty and list(model_sites.columns) == list(hepg2_sites.columns)
    assert len(images) == 0 and stats.empty
    missing = ModelFile(tmp_path / "no_shared_model.pt")
    with caplog.at_level(logging.INFO):
        model, history, labels = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "c.pt"),
                                             "HUVEC", changed(TINY_TRAINING, {"init": "shared"}), missing)
    assert model == {} and history.empty and labels.empty  # the shared model was not read (there is none)
    assert "HUVEC: no sites in this data set: no model trained" in caplog.text
    valid_logits, test_logits, valid_emb, test_emb = predict_wells(model, model_sites, images, stats, classes, "HUVEC",
                                                                   TINY_INFERENCE)
    treatments = classes.loc[classes["well_type"] == "treatment", "sirna"].astype(str).tolist()
    assert valid_logits.empty and list(valid_logits.columns) == ["id_code", *sorted(treatments, key=int)]
    assert test_emb.empty and list(test_emb.columns) == ["id_code"]


def test_init_scratch_never_reads_the_shared_model(prepared, tmp_path):
    classes, model_sites, images, stats = prepared
    missing = ModelFile(tmp_path / "no_shared_model.pt")
    model, history, _ = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "a.pt"), "HEPG2",
                                    changed(TINY_TRAINING, {"epochs": 1}), missing)
    assert list(history["epoch"]) == [1] and model["settings"]["init"] == "scratch"
    with pytest.raises(FileNotFoundError, match=r"HEPG2\.training\.init is 'shared' but there is no shared model at "
                                                rf"{tmp_path}/no_shared_model\.pt: train it first"):
        train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "b.pt"), "HEPG2",
                    changed(TINY_TRAINING, {"init": "shared"}), missing)


def test_the_lazy_catalog_entry_hands_over_an_unread_file(tmp_path):
    dataset = TorchCheckpointDataset(filepath=str(tmp_path / "shared/model.pt"), lazy=True)
    handle = dataset.load()  # no file yet: nothing is read
    assert isinstance(handle, ModelFile) and handle.path == Path(tmp_path / "shared/model.pt")
    dataset.save({"settings": {"arch": "test_resnet"}})
    assert handle.read("a test")["settings"]["arch"] == "test_resnet"


def test_the_shared_model_trains_only_for_lines_fine_tuned_from_it_and_only_on_lines_with_sites(
        prepared, absent, tmp_path, caplog):
    import logging

    classes, model_sites, images, stats = prepared
    shared = changed(TINY_TRAINING, {"epochs": 1, "init": "scratch"}, SharedTraining)
    inputs = line_inputs(HEPG2=(model_sites, images, stats), HUVEC=absent)
    with caplog.at_level(logging.INFO):
        model, history, _ = train_shared_model(classes, CheckpointStore(tmp_path / "s.pt"), shared, None, None,
                                               **inputs, HEPG2_training=TINY_TRAINING, HUVEC_training=TINY_TRAINING)
    assert model == {} and history.empty
    assert "shared model: not trained: no cell line with sites has training.init 'shared' (HEPG2 train" in caplog.text
    fine_tuned = changed(TINY_TRAINING, {"init": "shared"})
    model, history, _ = train_shared_model(classes, CheckpointStore(tmp_path / "t.pt"), shared, None, None, **inputs,
                                           HEPG2_training=fine_tuned, HUVEC_training=fine_tuned)
    assert model["settings"]["cell_lines"] == ["HEPG2"] and list(history["epoch"]) == [1]
    assert "shared model: no sites of HUVEC in this data set: trained on HEPG2 only" in caplog.text
