"""Training nodes on a tiny synthetic dataset: splits, plate statistics, resume, determinism."""

import logging

import numpy as np
import pytest
import torch

from rxrx1_pipeline.storage.images import STAT_COLUMNS
from rxrx1_pipeline.storage.checkpoints import CheckpointStore
from rxrx1_pipeline.pipelines.train.nodes import select_sites, train_model
from tests.pipelines.conftest import changed


def test_select_sites_holds_out_whole_experiments(tiny_data, tiny_training):
    _, wells, sites, classes = tiny_data
    table = select_sites(wells, sites, classes, "HEPG2", tiny_training)
    by_role = table.groupby("role")["experiment"].unique()
    assert list(by_role["valid"]) == ["HEPG2-03"]
    assert set(by_role["fit"]) == {"HEPG2-01", "HEPG2-02"}
    assert list(by_role["test"]) == ["HEPG2-04"]
    assert len(table) == 2 * len(wells)
    assert table["store_row"].tolist() == list(range(len(table)))
    unlabelled = (table["role"] == "test") & (table["well_type"] == "treatment")
    assert (table.loc[unlabelled, "class_index"] == -1).all()
    assert (table.loc[~unlabelled, "class_index"] >= 0).all()  # controls are labelled, test ones too
    with pytest.raises(ValueError, match="HEPG2: valid_experiments \\['HEPG2-09'\\]"):
        select_sites(wells, sites, classes, "HEPG2", changed(tiny_training, {"valid_experiments": ["HEPG2-09"]}))
    for held in (3, 5):  # all of the 3 labelled experiments, or more than there are
        with pytest.raises(ValueError, match=f"HEPG2: valid_experiments {held} must be at least 1 and fewer than "
                                             "its 3 labelled experiments"):
            select_sites(wells, sites, classes, "HEPG2", changed(tiny_training, {"valid_experiments": held}))
    with pytest.raises(ValueError, match="leaves nothing to fit"):
        select_sites(wells, sites, classes, "HEPG2",
                     changed(tiny_training, {"valid_experiments": ["HEPG2-01", "HEPG2-02", "HEPG2-03"]}))


def test_store_rows_hold_the_table_sites(prepared, tiny_data):
    reader = tiny_data[0]
    _, model_sites, images, _ = prepared
    for _, row in model_sites.sample(5, random_state=0).iterrows():
        np.testing.assert_array_equal(images.read(row["store_row"]), reader.read(row["w1"][:-7], 16))


def test_plate_statistics_are_each_plates_own(prepared):
    _, model_sites, images, stats = prepared
    assert len(stats) == model_sites[["experiment", "plate"]].drop_duplicates().shape[0]
    for _, plate in stats.iterrows():
        rows = model_sites.loc[model_sites["plate_index"] == plate["plate_index"], "store_row"]
        pixels = images.images[rows.to_numpy()].astype(np.float64)
        np.testing.assert_allclose(plate[STAT_COLUMNS[:6]].to_numpy(float), pixels.mean(axis=(0, 2, 3)),
                                   rtol=1e-9)
        np.testing.assert_allclose(plate[STAT_COLUMNS[6:]].to_numpy(float), pixels.std(axis=(0, 2, 3)),
                                   rtol=1e-6)


class CrashingStore(CheckpointStore):
    """Simulates a run killed right after its first checkpoint."""

    def save(self, *args):
        super().save(*args)
        raise KeyboardInterrupt


def test_interrupted_training_resumes_from_last_checkpoint(prepared, tiny_training, tmp_path, caplog):
    classes, model_sites, images, stats = prepared
    args = (model_sites, images, stats, classes)
    uninterrupted, history, _ = train_model(*args, CheckpointStore(tmp_path / "a.pt"), "HEPG2", tiny_training)
    assert list(history["epoch"]) == [1, 2]
    assert {"loss", "fit_accuracy", "valid_site_accuracy", "lr", "seconds"} <= set(history.columns)
    assert uninterrupted["settings"]["image_size"] == 16 and "num_workers" not in uninterrupted["settings"]

    with pytest.raises(KeyboardInterrupt):
        train_model(*args, CrashingStore(tmp_path / "b.pt"), "HEPG2", tiny_training)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["epoch"] == 1
    with caplog.at_level(logging.INFO):
        resumed, resumed_history, _ = train_model(*args, CheckpointStore(tmp_path / "b.pt"), "HEPG2", tiny_training)
    assert "HEPG2: resuming from the checkpoint after epoch 1" in caplog.text
    assert list(resumed_history["epoch"]) == [1, 2]
    for key, value in uninterrupted["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, msg=key)

    caplog.clear()
    with caplog.at_level(logging.INFO):
        train_model(*args, CheckpointStore(tmp_path / "b.pt"), "HEPG2", tiny_training)
    assert "already holds all 2 epochs" in caplog.text

    caplog.clear()  # other settings do not reuse the checkpoint
    with caplog.at_level(logging.INFO):
        train_model(*args, CheckpointStore(tmp_path / "b.pt"), "HEPG2", changed(tiny_training, {"epochs": 1}))
    assert "training from scratch" in caplog.text


def test_validation_passes_do_not_change_training(prepared, tiny_training, tmp_path):
    classes, model_sites, images, stats = prepared
    args = (model_sites, images, stats, classes)
    reference, _, _ = train_model(*args, CheckpointStore(tmp_path / "a.pt"), "HEPG2", tiny_training)
    other, _, _ = train_model(*args, CheckpointStore(tmp_path / "b.pt"), "HEPG2",
                              changed(tiny_training, {"validate_every": 0}))
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(other["state_dict"][key], value, msg=key)


def test_loader_workers_read_the_same_batches(prepared, tiny_training):
    """Workers only read pixels: batches do not depend on them (the views are drawn in this process)."""
    from rxrx1_pipeline.nn.data import StoreSites, fit_loader

    _, model_sites, images, _ = prepared
    batches = []
    for workers in (0, 2):
        data = fit_loader(StoreSites(images, model_sites["store_row"].to_numpy()),
                          model_sites["plate_index"].to_numpy(), 16, workers, seed=1)
        data.batch_sampler.set_epoch(2)
        batches.append(list(data))
    for (x0, idx0, _), (x2, idx2, _) in zip(*batches, strict=True):
        assert torch.equal(idx0, idx2) and torch.equal(x0, x2)


def test_changed_labels_or_pixels_retrain(prepared, tiny_training, tmp_path, caplog):
    """The resume key covers the labels and the image store's identity, not only the settings and well ids."""
    classes, model_sites, images, stats = prepared
    store = CheckpointStore(tmp_path / "c.pt")
    train_model(model_sites, images, stats, classes, store, "HEPG2", tiny_training)
    shuffled = model_sites.copy()
    fit = shuffled["role"] == "fit"
    shuffled.loc[fit, "class_index"] = np.random.default_rng(0).permutation(shuffled.loc[fit, "class_index"])
    with caplog.at_level(logging.INFO):
        train_model(shuffled, images, stats, classes, store, "HEPG2", tiny_training)
    assert "training from scratch" in caplog.text and "reusing" not in caplog.text

    class OtherPixels:  # same rows, another source folder or file fingerprint
        manifest = {**images.manifest, "files_sha1": "0" * 40}
        image_size = images.image_size
        read = images.read

    caplog.clear()
    with caplog.at_level(logging.INFO):
        train_model(model_sites, OtherPixels(), stats, classes, store, "HEPG2", tiny_training)
    assert "training from scratch" in caplog.text


def test_a_non_finite_loss_stops_training_and_keeps_the_good_checkpoint(prepared, tiny_training, tmp_path):
    classes, model_sites, images, stats = prepared
    store = CheckpointStore(tmp_path / "c.pt")
    train_model(model_sites, images, stats, classes, store, "HEPG2", changed(tiny_training, {"epochs": 1}))
    broken = stats.copy()
    broken[STAT_COLUMNS[0]] = np.nan  # every normalised input becomes NaN
    with pytest.raises(FloatingPointError, match=r"HEPG2 epoch 1/2: the loss became nan at batch 1 of \d+; "
                                                 r"training stopped: the model is not saved"):
        train_model(model_sites, images, broken, classes, store, "HEPG2", changed(tiny_training, {"max_skipped_steps": 0}))
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 1  # the good state, untouched


def test_controls_of_every_experiment_can_be_fitted_but_no_held_out_treatment(prepared):
    from rxrx1_pipeline.pipelines.train.nodes import sites_to_fit

    _, model_sites, _, _ = prepared
    plain = sites_to_fit(model_sites, "train_experiments")
    wide = sites_to_fit(model_sites, "all_experiments")
    assert set(plain["role"]) == {"fit"}
    added = wide[~wide["store_row"].isin(plain["store_row"])]
    assert set(added["role"]) == {"valid", "test"} and set(added["well_type"]) <= {"negative_control",
                                                                                    "positive_control"}
    assert (added["class_index"] >= 0).all() and len(added) > 0
    held_out_controls = model_sites[(model_sites["role"] != "fit") & (model_sites["well_type"] != "treatment")]
    assert len(added) == len(held_out_controls)


def test_final_fit_also_trains_on_the_validation_experiments(prepared):
    from rxrx1_pipeline.pipelines.train.nodes import sites_to_fit

    _, model_sites, _, _ = prepared
    final = sites_to_fit(model_sites, "train_experiments", final_fit=True)
    assert set(final["role"]) == {"fit", "valid"}
    assert len(final) == int(model_sites["role"].isin(["fit", "valid"]).sum())
