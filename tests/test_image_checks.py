"""PNGs that are not what an RxRx1 site should be (16-bit, colour, a channel of another size) are refused,
naming the file and what it is, before an image store writes anything."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rxrx1_pipeline.storage.images import (
    DecodeJob,
    ImageFormatError,
    PngSites,
    build_store,
    read_site,
    staging_path,
    write_site,
)

PREFIX = "train/X-01/Plate1/B02_s1"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """One good 12 px site (six 8-bit PNGs) under tmp_path/pngs."""
    root = tmp_path / "pngs"
    write_site(root, PREFIX, np.random.default_rng(0).integers(0, 256, (6, 12, 12), np.uint8))
    return root


def replace_channel(root: Path, channel: int, array: np.ndarray) -> Path:
    file = root / f"{PREFIX}_w{channel}.png"
    Image.fromarray(array).save(file)
    return file


def test_a_good_site_reads_as_uint8(site: Path):
    image = read_site(site, PREFIX, 8)
    assert image.shape == (6, 8, 8) and image.dtype == np.uint8


def test_16_bit_png_is_refused_not_clipped_to_white(site: Path):
    file = replace_channel(site, 3, np.full((12, 12), 4000, np.uint16))
    with pytest.raises(ImageFormatError) as err:
        read_site(site, PREFIX)
    assert str(err.value).startswith(f"image {file} is mode I;16 (16-bit, 1 channel), 12 x 12 px: every RxRx1 "
                                     "image must be an 8-bit single-channel PNG (mode L)")


def test_rgb_png_is_refused(site: Path):
    file = replace_channel(site, 1, np.zeros((12, 12, 3), np.uint8))
    with pytest.raises(ImageFormatError, match=rf"image {file} is mode RGB \(8-bit, 3 channels\), 12 x 12 px"):
        read_site(site, PREFIX, 8)


def test_channel_of_another_size_is_refused_naming_both(site: Path):
    file = replace_channel(site, 5, np.zeros((10, 12), np.uint8))
    with pytest.raises(ImageFormatError) as err:
        read_site(site, PREFIX, 8)  # resizing would have hidden it
    assert str(err.value) == (f"image {file} is 12 x 10 px but B02_s1_w1.png of the same site is 12 x 12 px: "
                              "the six channels of a site must have one size")


def test_store_build_refuses_a_16_bit_png_before_writing_anything(site: Path, tmp_path: Path):
    second = "train/X-01/Plate1/B03_s1"
    write_site(site, second, np.zeros((6, 12, 12), np.uint8))
    file = site / f"{second}_w6.png"
    Image.fromarray(np.full((12, 12), 300, np.uint16)).save(file)
    store = tmp_path / "store"
    job = DecodeJob(PngSites(site), (PREFIX, second), 8)
    with pytest.raises(ImageFormatError, match=rf"image {file} is mode I;16 \(16-bit"):
        build_store(store, job, workers=1)
    assert not store.exists() and not staging_path(store).exists()


def test_a_site_of_another_resolution_is_refused_before_the_store_is_written(site: Path, tmp_path: Path):
    """One site at 24 px among 12 px sites: resizing it to the store's size would change its cells' scale."""
    second = "train/X-01/Plate1/B03_s1"
    write_site(site, second, np.zeros((6, 24, 24), np.uint8))
    store = tmp_path / "store"
    with pytest.raises(ImageFormatError) as err:
        build_store(store, DecodeJob(PngSites(site), (PREFIX, second), 8), workers=1)
    assert str(err.value).startswith(f"image {site / second}_w1.png is 24 x 24 px but the other sites are 12 x 12 px "
                                     f"(e.g. {site / PREFIX}_w1.png): every site of a data set must have one "
                                     "resolution")
    assert not store.exists() and not staging_path(store).exists()
