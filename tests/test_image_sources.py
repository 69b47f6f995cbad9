"""Where training reads pixels from (``images:``): the decode-once store, a store of centre crops, or the PNGs
decoded on every read, behind one interface; each is part of the store's identity."""

import typing

import numpy as np
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from rxrx1_pipeline.kedro_io.datasets import ImageStoreDataset, SiteImagesDataset
from rxrx1_pipeline.storage.images import (
    IMAGES,
    DecodeJob,
    ImageStore,
    PngSites,
    PngStore,
    StoreError,
    read_site,
)
from rxrx1_pipeline.pipelines.train.nodes import decode_sites
from rxrx1_pipeline.schema import ImageSource, ParameterError, validate_parameters
from tests.conftest import ROOT

FULL, SIZE = 12, 8


@pytest.fixture(scope="module")
def png_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(1)
    sites = {f"train/X-01/Plate1/B{2 + i:02d}_s1": rng.integers(0, 256, (6, FULL, FULL), np.uint8) for i in range(10)}
    SiteImagesDataset(path=str(root), workers=1).save(sites)
    return root, tuple(sorted(sites))


def build(path, root, prefixes, pixels="store", fit="resize", size=SIZE):
    dataset = ImageStoreDataset(path=str(path), workers=1)
    dataset.save(DecodeJob(PngSites(root), prefixes, size, ImageSource(source=pixels, fit=fit)))
    return dataset.load()


def test_png_source_reads_the_same_pixels_and_moments_as_the_store_without_a_pixel_file(png_tree, tmp_path):
    root, prefixes = png_tree
    store = build(tmp_path / "store", root, prefixes)
    png = build(tmp_path / "png", root, prefixes, pixels="png")
    assert type(store) is ImageStore and isinstance(png, PngStore)
    assert not (tmp_path / "png" / IMAGES).exists() and (tmp_path / "store" / IMAGES).exists()
    assert len(png) == len(store) == 10 and png.image_size == store.image_size == SIZE
    for row, prefix in enumerate(prefixes):
        np.testing.assert_array_equal(png.read(row), store.read(row))
        np.testing.assert_array_equal(png.read(row), read_site(root, prefix, SIZE))
    np.testing.assert_allclose(png.moments, store.moments)
    # the identity training fingerprints differs only in where the pixels come from
    assert {k: v for k, v in png.manifest.items() if store.manifest[k] != v} == {"pixels": "png"}
    with pytest.raises(StoreError, match="PNG source"):
        png.images


def test_centre_crop_store_holds_the_full_resolution_centre(png_tree, tmp_path):
    root, prefixes = png_tree
    crop = build(tmp_path / "crop", root, prefixes, fit="crop")
    png_crop = build(tmp_path / "png_crop", root, prefixes, pixels="png", fit="crop")
    offset = (FULL - SIZE) // 2
    for row, prefix in enumerate(prefixes):
        expected = read_site(root, prefix)[:, offset:offset + SIZE, offset:offset + SIZE]
        np.testing.assert_array_equal(crop.read(row), expected)
        np.testing.assert_array_equal(png_crop.read(row), expected)
    assert crop.manifest["fit"] == "crop" and crop.manifest["image_size"] == SIZE


def test_a_crop_larger_than_the_images_is_refused_naming_the_site(png_tree, tmp_path):
    root, prefixes = png_tree
    with pytest.raises(Exception, match=rf"{root}/{prefixes[0]}_w\*\.png: cannot crop 16 x 16 px from a 12 x 12 px"):
        build(tmp_path / "big", root, prefixes[:1], fit="crop", size=16)


def test_png_source_reports_a_missing_channel_file_on_read(png_tree, tmp_path):
    import shutil

    root, prefixes = png_tree
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    png = build(tmp_path / "png", copy, prefixes, pixels="png")
    missing = copy / f"{prefixes[3]}_w5.png"
    missing.unlink()
    with pytest.raises(OSError, match=str(missing)):
        png.read(3)


def test_images_block_is_validated_and_the_node_passes_it_to_the_job(png_tree):
    import pandas as pd

    root, prefixes = png_tree
    with pytest.raises(ValidationError, match="Input should be 'store' or 'png'"):
        ImageSource(source="disk")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ImageSource(source="png", size=256)
    with pytest.raises(ParameterError, match=r"images.fit = 'squash'"):
        validate_parameters({"images": {"fit": "squash"}}, {"images"})
    sites = pd.DataFrame({"w1": [f"{p}_w1.png" for p in prefixes], "store_row": range(len(prefixes))})
    training = {**yaml.safe_load((ROOT / "conf/base/parameters_train.yml").read_text())["HEPG2"]["training"],
                "image_size": SIZE}
    hint = typing.get_type_hints(decode_sites)["training"]  # as Kedro builds it: the model the hint names, if any
    training = hint.model_validate(training) if isinstance(hint, type) and issubclass(hint, BaseModel) else training
    job = decode_sites(sites, PngSites(root), training, ImageSource(source="png", fit="crop"))
    assert (job.images.source, job.images.fit, job.image_size, job.prefixes) == ("png", "crop", SIZE, prefixes)
    assert job.store_bytes() == 10 * 2 * 6 * 8  # statistics only
    assert DecodeJob(PngSites(root), prefixes, 512).store_bytes() == 10 * (6 * 512 * 512 + 2 * 6 * 8)
