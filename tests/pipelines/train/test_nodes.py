import logging

import numpy as np
import pytest
import torch

from rxrx1_pipeline.datasets import CheckpointStore
from rxrx1_pipeline.model import EmbeddingNet, Normaliser, dihedral
from rxrx1_pipeline.pipelines.train.nodes import (
    STAT_COLUMNS,
    decode_sites,
    plate_statistics,
    select_sites,
    train_model,
)


@pytest.fixture
def prepared(tiny_data, tiny_model):
    root, wells, sites, classes = tiny_data
    model_sites = select_sites(wells, sites, classes, "HEPG2", tiny_model)
    images = decode_sites(model_sites, root, tiny_model)
    stats = plate_statistics(model_sites, images, root, tiny_model)
    return root, classes, model_sites, images, stats


def test_select_sites_holds_out_whole_experiments(tiny_data, tiny_model):
    root, wells, sites, classes = tiny_data
    table = select_sites(wells, sites, classes, "HEPG2", tiny_model)
    by_role = table.groupby("role")["experiment"].unique()
    assert list(by_role["valid"]) == ["HEPG2-03"]
    assert set(by_role["fit"]) == {"HEPG2-01", "HEPG2-02"}
    assert list(by_role["test"]) == ["HEPG2-04"]
    assert len(table) == 2 * len(wells)
    unlabelled = (table["role"] == "test") & (table["well_type"] == "treatment")
    assert (table.loc[unlabelled, "class_index"] == -1).all()
    assert (table.loc[~unlabelled, "class_index"] >= 0).all()  # controls are labelled, test ones too
    with pytest.raises(ValueError, match="HEPG2: valid_experiments \\['HEPG2-09'\\]"):
        select_sites(wells, sites, classes, "HEPG2", {**tiny_model, "valid_experiments": ["HEPG2-09"]})
    with pytest.raises(ValueError, match="leaves nothing to fit"):
        select_sites(wells, sites, classes, "HEPG2", {**tiny_model, "valid_experiments": 3})


def test_decoded_cache_matches_pngs_and_can_be_off(prepared, tiny_model):
    from pathlib import Path

    from rxrx1_pipeline.datasets import read_site

    root, _, model_sites, images, _ = prepared
    assert images.shape == (len(model_sites), 6, 16, 16) and images.dtype == np.uint8
    row = model_sites.iloc[5]
    np.testing.assert_array_equal(images[row["cache_row"]], read_site(Path(root), row["w1"][:-7]))
    off = decode_sites(model_sites, root, {**tiny_model, "decoded_cache": False})
    assert off.shape[0] == 0
    too_big = decode_sites(model_sites, root, {**tiny_model, "decoded_cache_max_gib": 1e-6})
    assert too_big.shape == (0, 6, 16, 16)


def test_plate_statistics_are_each_plates_own(prepared, tiny_model):
    root, _, model_sites, images, stats = prepared
    assert len(stats) == model_sites[["experiment", "plate"]].drop_duplicates().shape[0]
    for _, plate in stats.iterrows():
        rows = model_sites.loc[model_sites["plate_index"] == plate["plate_index"], "cache_row"]
        pixels = images[rows.to_numpy()].astype(np.float64)
        np.testing.assert_allclose(plate[STAT_COLUMNS[:6]].to_numpy(float), pixels.mean(axis=(0, 2, 3)),
                                   rtol=1e-9)
        np.testing.assert_allclose(plate[STAT_COLUMNS[6:]].to_numpy(float), pixels.std(axis=(0, 2, 3)),
                                   rtol=1e-6)
    # reading the PNGs instead of the cache gives the same statistics
    from_png = plate_statistics(model_sites, images[:0], root, tiny_model)
    np.testing.assert_allclose(from_png[STAT_COLUMNS].to_numpy(float), stats[STAT_COLUMNS].to_numpy(float))


def test_normaliser_modes():
    x = torch.arange(2 * 6 * 4 * 4, dtype=torch.float32).reshape(2, 6, 4, 4)
    image = Normaliser("image")(x)
    assert torch.allclose(image.mean(dim=(2, 3)), torch.zeros(2, 6), atol=1e-5)
    mean = np.full((3, 6), 10.0, np.float32)
    std = np.full((3, 6), 2.0, np.float32)
    plate = Normaliser("plate", mean, std)(x, torch.tensor([0, 2]))
    assert torch.allclose(plate, (x - 10.0) / 2.0)
    with pytest.raises(ValueError, match="normalization must be"):
        Normaliser("batch")


def test_dihedral_views_are_distinct_and_invertible():
    x = torch.arange(16.0).reshape(1, 4, 4)
    views = [dihedral(x, k) for k in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8


@pytest.mark.parametrize("head", ["cosface", "arcface", "softmax"])
def test_one_step_lowers_the_loss(head):
    torch.manual_seed(0)
    net = EmbeddingNet("test_resnet", n_classes=5, embedding_dim=8, head=head, margin=0.2, scale=10.0)
    x, y = torch.randn(10, 6, 16, 16), torch.arange(10) % 5
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    net.train()

    def loss():
        return torch.nn.functional.cross_entropy(net.logits(net(x), y), y)

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    assert loss().item() < before.item()


class CrashingStore(CheckpointStore):
    """Simulates a run killed right after its first checkpoint."""

    def save(self, state):
        super().save(state)
        raise KeyboardInterrupt


def test_interrupted_training_resumes_from_last_checkpoint(prepared, tiny_model, tmp_path, caplog):
    root, classes, model_sites, images, stats = prepared
    args = (model_sites, images, stats, classes)
    uninterrupted, history = train_model(*args, CheckpointStore(tmp_path / "a.pt"), root, "HEPG2", tiny_model)
    assert list(history["epoch"]) == [1, 2]
    assert {"loss", "fit_accuracy", "valid_site_accuracy", "lr", "seconds"} <= set(history.columns)

    with pytest.raises(KeyboardInterrupt):
        train_model(*args, CrashingStore(tmp_path / "b.pt"), root, "HEPG2", tiny_model)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["epoch"] == 1
    with caplog.at_level(logging.INFO):
        resumed, resumed_history = train_model(*args, CheckpointStore(tmp_path / "b.pt"), root, "HEPG2",
                                               tiny_model)
    assert "resuming from checkpoint after epoch 1 of 2" in caplog.text
    assert list(resumed_history["epoch"]) == [1, 2]
    for key, value in uninterrupted["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, msg=key)

    # other settings do not reuse the checkpoint
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train_model(*args, CheckpointStore(tmp_path / "b.pt"), root, "HEPG2", {**tiny_model, "epochs": 1})
    assert "training from scratch" in caplog.text


def test_missing_image_is_an_error_naming_the_file(tiny_data, tiny_model, tmp_path):
    import shutil

    root, wells, sites, classes = tiny_data
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    model_sites = select_sites(wells, sites, classes, "HEPG2", tiny_model)
    victim = copy / model_sites["w3"].iloc[7]
    victim.unlink()
    with pytest.raises(OSError, match=f"cannot read image {victim}"):
        decode_sites(model_sites, str(copy), tiny_model)
    victim.write_bytes(b"not a png")
    with pytest.raises(OSError, match=f"cannot read image {victim}"):
        plate_statistics(model_sites, np.zeros((0, 6, 16, 16), np.uint8), str(copy), tiny_model)


def test_local_pretrained_weights_adapt_the_first_conv(tmp_path):
    import timm
    from timm.models import adapt_input_conv

    source = timm.create_model("test_resnet", pretrained=False, in_chans=3, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    net = EmbeddingNet("test_resnet", n_classes=4, embedding_dim=8, pretrained_weights=str(tmp_path / "weights.pth"))
    own = net.backbone.state_dict()
    conv = next(k for k, v in source.state_dict().items() if v.ndim == 4)
    assert own[conv].shape[1] == 6
    torch.testing.assert_close(own[conv], adapt_input_conv(6, source.state_dict()[conv]))
    other = [k for k, v in source.state_dict().items() if v.ndim == 4][-1]
    torch.testing.assert_close(own[other], source.state_dict()[other])
    with pytest.raises(FileNotFoundError, match="pretrained_weights: no such file"):
        EmbeddingNet("test_resnet", 4, 8, pretrained_weights=str(tmp_path / "missing.pth"))


def test_site_images_save_swaps_in_complete_trees_only(tmp_path):
    from rxrx1_pipeline.datasets import SiteImagesDataset

    site = np.full((6, 4, 4), 7, np.uint8)
    dataset = SiteImagesDataset(path=str(tmp_path), workers=1)
    dataset.save({"train/X-01/Plate1/B02_s1": site, "test/X-02/Plate1/B02_s1": site})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train"]

    def broken():
        raise RuntimeError("interrupted")

    from kedro.io import DatasetError

    with pytest.raises(DatasetError, match="Failed while saving") as failure:
        dataset.save({"train/X-01/Plate1/B03_s1": site, "test/X-02/Plate1/B03_s1": broken})
    assert "interrupted" in repr(failure.value.__cause__)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*/*/*_w1.png")) == [
        "test/X-02/Plate1/B02_s1_w1.png", "train/X-01/Plate1/B02_s1_w1.png"]  # the old tree, untouched
    dataset.save({"train/X-03/Plate2/C05_s2": site})  # train/ is replaced as a whole, test/ is kept
    assert list(dataset.load()) == ["test/X-02/Plate1/B02_s1", "train/X-03/Plate2/C05_s2"]
    np.testing.assert_array_equal(dataset.load()["train/X-03/Plate2/C05_s2"](), site)


def test_validation_passes_do_not_change_training(prepared, tiny_model, tmp_path):
    root, classes, model_sites, images, stats = prepared
    args = (model_sites, images, stats, classes)
    with_checks, _ = train_model(*args, CheckpointStore(tmp_path / "a.pt"), root, "HEPG2", tiny_model)
    without, _ = train_model(*args, CheckpointStore(tmp_path / "b.pt"), root, "HEPG2",
                             {**tiny_model, "validate_every": 0})
    for key, value in with_checks["state_dict"].items():
        torch.testing.assert_close(without["state_dict"][key], value, msg=key)
