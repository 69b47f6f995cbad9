import numpy as np
import pandas as pd
import pytest
import torch

from rxrx1_pipeline.storage.checkpoints import CheckpointStore
from rxrx1_pipeline.nn.wells import centre_plates, combine_cell_lines, per_well
from rxrx1_pipeline.pipelines.inference.nodes import predict_wells
from rxrx1_pipeline.pipelines.train.nodes import train_model
from tests.pipelines.conftest import changed, TINY_INFERENCE


def test_per_well_averages_sites():
    codes = pd.Series(["b", "a", "b", "a"])
    values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    out = per_well(codes, values, ["0", "7"])
    assert list(out.columns) == ["id_code", "0", "7"]
    assert list(out["id_code"]) == ["a", "b"]
    np.testing.assert_allclose(out[["0", "7"]].to_numpy(), [[5.0, 6.0], [3.0, 4.0]])
    assert (out.dtypes.iloc[1:] == np.float32).all()
    summed = per_well(codes, values, ["0", "7"], how="sum")
    np.testing.assert_allclose(summed[["0", "7"]].to_numpy(), [[10.0, 12.0], [6.0, 8.0]])


def test_logits_follow_the_cached_logits_contract(tiny_data, prepared, tiny_training, tmp_path):
    wells = tiny_data[1]
    classes, model_sites, images, stats = prepared
    checkpoint, _, _ = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "c.pt"),
                                "HEPG2", changed(tiny_training, {"epochs": 1}))
    valid_logits, test_logits, valid_emb, test_emb = predict_wells(
        checkpoint, model_sites, images, stats, classes, "HEPG2", TINY_INFERENCE)

    treatment = wells[wells["well_type"] == "treatment"]
    sirnas = sorted(classes.loc[classes["well_type"] == "treatment", "sirna"])
    for logits, split_wells in ((valid_logits, treatment[treatment["experiment"] == "HEPG2-03"]),
                                (test_logits, treatment[treatment["split"] == "test"])):
        assert list(logits.columns) == ["id_code", *map(str, sirnas)]
        assert sorted(logits["id_code"]) == sorted(split_wells["id_code"])
        assert (logits.dtypes.iloc[1:] == np.float32).all()
        assert np.isfinite(logits.iloc[:, 1:].to_numpy()).all()
    assert list(valid_emb["id_code"]) == list(valid_logits["id_code"])
    assert valid_emb.shape[1] == 1 + tiny_training.embedding_dim
    assert len(test_emb) == len(test_logits)

    # the same checkpoint gives the same logits (deterministic inference), also read by loader workers
    again = predict_wells(checkpoint, model_sites, images, stats, classes, "HEPG2",
                          changed(TINY_INFERENCE, {"num_workers": 2}))[0]
    pd.testing.assert_frame_equal(again, valid_logits)

    # the image size comes from the checkpoint, and must match the store
    other = {**checkpoint, "settings": {**checkpoint["settings"], "image_size": 32}}
    with pytest.raises(ValueError, match="HEPG2: the model was trained on 32 px images but the image store "
                                         "holds 16 px"):
        predict_wells(other, model_sites, images, stats, classes, "HEPG2", TINY_INFERENCE)

    both = combine_cell_lines(test_logits.iloc[3:], test_logits.iloc[:3])
    pd.testing.assert_frame_equal(both, test_logits.sort_values("id_code", ignore_index=True))


def test_centre_plates_moves_each_plate_mean_to_the_overall_mean():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 3)).astype(np.float32)
    plates = np.repeat([0, 1, 2], 4)
    emb[plates == 1] += 5.0  # a plate-wide shift
    out = centre_plates(emb, plates)
    for plate in (0, 1, 2):
        np.testing.assert_allclose(out[plates == plate].mean(0), emb.mean(0), atol=1e-5)
        np.testing.assert_allclose(np.diff(out[plates == plate], axis=0), np.diff(emb[plates == plate], axis=0),
                                   atol=1e-5)  # within a plate nothing changes


def test_adapt_batchnorm_takes_the_statistics_of_the_given_sites(prepared):
    from rxrx1_pipeline.nn.loops import adapt_batchnorm
    from rxrx1_pipeline.nn.network import normaliser_from_stats

    _, model_sites, images, stats = prepared
    plate = model_sites[model_sites["plate_index"] == 0]
    norm = normaliser_from_stats("image", stats)
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(6)).eval()
    adapt_batchnorm(net, norm, images, plate, batch_size=5, workers=0)
    pixels = torch.stack([norm(torch.from_numpy(np.array(images.read(r)))[None])[0] for r in plate["store_row"]])
    torch.testing.assert_close(net[0].running_mean, pixels.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not net.training  # back in eval mode


def test_batch_effect_corrections_keep_the_contract(prepared, tiny_training, tmp_path):
    classes, model_sites, images, stats = prepared
    checkpoint, _, _ = train_model(model_sites, images, stats, classes, CheckpointStore(tmp_path / "c.pt"),
                                "HEPG2", changed(tiny_training, {"epochs": 1}))
    plain = predict_wells(checkpoint, model_sites, images, stats, classes, "HEPG2", TINY_INFERENCE)
    for change in ({"batchnorm": "per_plate"}, {"plate_centring": True}):
        corrected = predict_wells(checkpoint, model_sites, images, stats, classes, "HEPG2",
                                  changed(TINY_INFERENCE, {**change}))
        for before, after in zip(plain, corrected):
            assert list(after["id_code"]) == list(before["id_code"]) and list(after.columns) == list(before.columns)
            assert np.isfinite(after.iloc[:, 1:].to_numpy()).all()
        assert not np.allclose(corrected[0].iloc[:, 1:], plain[0].iloc[:, 1:])
    again = predict_wells(checkpoint, model_sites, images, stats, classes, "HEPG2", TINY_INFERENCE)
    pd.testing.assert_frame_equal(again[0], plain[0])  # the checkpoint itself is untouched
