"""Real RxRx1 pixels through the project's own code at 512 px: ingest of the real CSV rows, the image store,
a few training steps on CPU and the logits of the test sites.

../shared/rxrx1/images holds 180 real PNGs (well B02 of every plate of HEPG2-01, HUVEC-01, RPE-01, U2OS-01
and plates 1-2 of test HEPG2-08): site 1 of each has all six channels, site 2 lacks w5 and w6 (a real
missing-file case). The data root built here is in the Kaggle layout, with the real CSV rows of those
experiments plus, as metadata only (their sites have no images here), one more labelled experiment per
cell line (the held-out experiment ``select_sites`` requires) and a test experiment of each cell line but
HEPG2 (ingest wants test wells of every cell line). Skipped where ../shared is absent.

The network and recipe are the ``real`` environment's (conf/real over conf/base) but for the backbone: timm
``test_resnet`` (a few thousand parameters) instead of densenet161, which takes seconds per 512 px site on
these CPUs (``benchmarks/real_pixels.py``), two epochs of batches of 8, and no pseudo-labels.
"""

import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rxrx1_pipeline.kedro_io.datasets import CheckpointStoreDataset, ImageStoreDataset
from rxrx1_pipeline.storage.images import DecodeJob, PngSites, PngStore, StoreError, build_store, read_site
from rxrx1_pipeline.pipelines.ingest.nodes import build_class_index, build_sites, build_wells
from rxrx1_pipeline.storage.images import plate_statistics
from rxrx1_pipeline.pipelines.train.nodes import (
    decode_sites,
    select_sites,
    train_shared_model,
)
from rxrx1_pipeline.leak.plates import CHANNELS, CELL_LINES
from rxrx1_pipeline.schema import ImageSource
from tests.conftest import CSVS, ROOT, SHARED

REAL_IMAGES = SHARED / "rxrx1" / "images"
WITH_IMAGES = ("HEPG2-01", "HUVEC-01", "RPE-01", "U2OS-01", "HEPG2-08")
HELD_OUT = ("HEPG2-02", "HUVEC-02", "RPE-02", "U2OS-02")  # metadata only
TEST_METADATA = ("HUVEC-17", "RPE-08", "U2OS-04")  # metadata only: ingest wants test wells of every cell line
SIZE = 512


def typed(func, argument: str, value: dict):
    """``value`` as Kedro hands it to ``func``: built into the pydantic model its type hint names, if any."""
    from pydantic import BaseModel

    hint = typing.get_type_hints(func).get(argument)
    return hint.model_validate(value) if isinstance(hint, type) and issubclass(hint, BaseModel) else value


def complete_sites(model_sites: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The sites whose six PNGs are all under ``root``, store rows and plate indices renumbered."""
    has = np.array([all((root / row[f"w{c}"]).is_file() for c in CHANNELS)
                    for _, row in model_sites.iterrows()], dtype=bool)
    kept = model_sites[has].sort_values("store_row", ignore_index=True)
    kept["store_row"] = np.arange(len(kept))
    kept["plate_index"] = pd.factorize(kept["plate_index"], sort=True)[0]
    return kept


@pytest.fixture(scope="module")
def real_root(real_metadata, tmp_path_factory) -> Path:
    """A Kaggle-layout data root: the real CSV rows of WITH_IMAGES + HELD_OUT, the real image trees linked."""
    if not (REAL_IMAGES / "train").is_dir():
        pytest.skip(f"real RxRx1 images not found in {REAL_IMAGES}")
    root = tmp_path_factory.mktemp("real_rxrx1")
    for name in CSVS:
        table = pd.read_csv(real_metadata / name)
        table[table["experiment"].isin(WITH_IMAGES + HELD_OUT + TEST_METADATA)].to_csv(root / name, index=False)
    for top in ("train", "test"):
        (root / top).symlink_to(REAL_IMAGES / top, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def ingested(real_root):
    wells = build_wells(*(pd.read_csv(real_root / f) for f in CSVS))
    return wells, build_sites(wells), build_class_index(wells)


def merged(base: dict, over: dict) -> dict:
    """``over`` soft-merged into ``base`` (nested blocks key by key), as Kedro merges an environment's conf."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def training_block(**overrides) -> dict:
    """The `real` environment's shared_training block (conf/real over conf/base: the real network and recipe)
    with a small backbone, two epochs and no pseudo-labels, for a CPU at 512 px."""
    base, real = (yaml.safe_load((ROOT / "conf" / env / "parameters_train.yml").read_text())["shared_training"]
                  for env in ("base", "real"))
    block = merged(base, real)
    small = {"arch": "test_resnet", "pretrained": "none", "image_size": SIZE, "epochs": 2, "batch_size": 8,
             "validate_every": 0, "num_workers": 0, "device": "cpu", "pseudo_labels": {"start_epoch": 0}}
    if "lr_cycles" in block:
        small["lr_cycles"] = [{"lr": block["lr"], "until_epoch": 2}]
    return merged(block, {**small, **overrides})


def test_incomplete_real_site_fails_naming_the_missing_file(real_root, tmp_path):
    prefix = "train/HEPG2-01/Plate1/B02_s2"
    with pytest.raises(OSError, match=rf"{real_root}/{prefix}_w5\.png"):
        read_site(real_root, prefix)
    for pixels in ("store", "png"):
        with pytest.raises(OSError, match=rf"{real_root}/{prefix}_w5\.png"):
            build_store(tmp_path / pixels, DecodeJob(PngSites(real_root), ("train/HEPG2-01/Plate1/B02_s1", prefix),
                                                     SIZE, ImageSource(source=pixels)), workers=1)
        assert not (tmp_path / pixels).exists()


def test_real_sites_end_to_end_at_512_px(real_root, ingested, tmp_path):
    wells, sites, classes = ingested
    assert len(classes) == 1108 + 31  # the real treatment siRNAs and controls of these experiments
    reader = PngSites(real_root)
    training = training_block()
    per_line, total = {}, 0
    for cell_line in CELL_LINES:
        model_sites = complete_sites(select_sites(wells, sites, classes, cell_line,
                                                  typed(select_sites, "training", training)), real_root)
        assert set(model_sites["site"]) == {1} and len(model_sites) == (6 if cell_line == "HEPG2" else 4)
        store = ImageStoreDataset(path=str(tmp_path / "store" / cell_line), workers=1)
        store.save(decode_sites(model_sites, reader, typed(decode_sites, "training", training), ImageSource()))
        images = store.load()
        assert len(images) == len(model_sites) and images.image_size == SIZE
        first = model_sites.iloc[0]["w1"][: -len("_w1.png")]
        np.testing.assert_array_equal(images.read(0), read_site(real_root, first))  # 512 px: no resampling
        stats = plate_statistics(model_sites, images)
        assert np.isfinite(stats.filter(like="_w").to_numpy()).all() and (stats.filter(like="std_").to_numpy() > 0).all()
        per_line |= {f"{cell_line}_model_sites": model_sites, f"{cell_line}_site_images": images,
                     f"{cell_line}_plate_stats": stats}
        total += int((model_sites["role"] == "fit").sum())
    assert total == 16  # site 1 of B02 on the 16 train plates

    checkpoints = CheckpointStoreDataset(filepath=str(tmp_path / "shared" / "last_epoch.pt")).load()
    model, history, _ = train_shared_model(classes, checkpoints, typed(train_shared_model, "training", training),
                                        None, None, **per_line)
    assert list(history["epoch"]) == [1, 2] and np.isfinite(history["loss"]).all()

    import torch

    from rxrx1_pipeline.nn.checkpoints import load_model
    from rxrx1_pipeline.nn.loops import class_logits, embed_sites
    from rxrx1_pipeline.nn.network import normaliser_from_stats

    hepg2_sites, hepg2_images, hepg2_stats = (per_line[f"HEPG2_{name}"] for name in ("model_sites", "site_images",
                                                                                       "plate_stats"))
    # HEPG2 comes first: its rows and plates need no offset
    test = hepg2_sites[hepg2_sites["role"] == "test"].assign(line_index=0)
    assert sorted(test["id_code"]) == ["HEPG2-08_1_B02", "HEPG2-08_2_B02"]
    net = load_model(model, torch.device("cpu"))
    norm = normaliser_from_stats(model["settings"]["normalization"], hepg2_stats)
    logits = class_logits(net, embed_sites(net, norm, hepg2_images, test, batch_size=2, workers=0, tta=2))
    assert logits.shape == (2, len(classes)) and np.isfinite(logits).all()


def test_png_source_reads_the_real_store_pixels(real_root, ingested, tmp_path):
    wells, sites, classes = ingested
    training = training_block()
    model_sites = complete_sites(select_sites(wells, sites, classes, "HEPG2", typed(select_sites, "training", training)),
                                 real_root)
    stores = {}
    for source in ("store", "png"):
        dataset = ImageStoreDataset(path=str(tmp_path / source), workers=1)
        dataset.save(decode_sites(model_sites, PngSites(real_root), typed(decode_sites, "training", training),
                                  ImageSource(source=source)))
        stores[source] = dataset.load()
    assert isinstance(stores["png"], PngStore) and stores["png"].manifest["pixels"] == "png"
    for row in range(len(model_sites)):
        np.testing.assert_array_equal(stores["png"].read(row), stores["store"].read(row))
    np.testing.assert_array_equal(stores["png"].moments, stores["store"].moments)
    with pytest.raises(StoreError):
        stores["png"].images
