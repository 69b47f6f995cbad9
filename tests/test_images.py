"""The decode-once image store: one decode per site, the PNG pixels, atomic builds, resume after a kill,
a clear error when the disk is too small."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rxrx1_pipeline.kedro_io.datasets import SiteImagesDataset
from rxrx1_pipeline.storage.images import (
    DecodeJob,
    ImageStore,
    PngSites,
    StoreError,
    build_store,
    read_site,
)
from tests.conftest import ROOT

SIZE = 8


@dataclass(frozen=True)
class CountingSites(PngSites):
    """A PNG reader that records every site it reads in a log file (works across processes)."""

    log: Path = Path("/dev/null")
    fail_after: int = -1  # raise on this read (0-based), to simulate a crash

    def read(self, prefix, size=None):
        with open(self.log, "a") as f:
            f.write(prefix + "\n")
        if self.fail_after >= 0 and len(self.log.read_text().splitlines()) > self.fail_after:
            raise RuntimeError("simulated crash while decoding")
        return super().read(prefix, size)


@dataclass(frozen=True)
class SlowSites(PngSites):
    """A PNG reader slow enough to be killed mid-build."""

    def read(self, prefix, size=None):
        time.sleep(0.05)
        return super().read(prefix, size)


@pytest.fixture(scope="module")
def png_tree(tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """40 random sites of 12 px written as PNGs (decoded to 8 px, so resizing is exercised)."""
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    sites = {f"train/X-01/Plate{1 + i // 20}/B{2 + i % 20:02d}_s1": rng.integers(0, 256, (6, 12, 12), np.uint8)
             for i in range(40)}
    SiteImagesDataset(path=str(root), workers=1).save(sites)
    return root, tuple(sorted(sites))


def reads(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_store_holds_the_png_pixels_and_moments_and_decodes_each_site_once(png_tree, tmp_path):
    root, prefixes = png_tree
    log = tmp_path / "reads.txt"
    job = DecodeJob(CountingSites(root, log), prefixes, SIZE)
    build_store(tmp_path / "store", job, workers=2, chunk=8)
    assert sorted(reads(log)) == sorted(prefixes)  # every site exactly once, over 2 processes
    store = ImageStore(tmp_path / "store")
    assert store.images.shape == (40, 6, SIZE, SIZE) and store.images.dtype == np.uint8
    for row, prefix in enumerate(prefixes):
        expected = read_site(root, prefix, SIZE)
        np.testing.assert_array_equal(store.read(row), expected)
        np.testing.assert_allclose(store.moments[row, 0], expected.mean(axis=(1, 2)))
        np.testing.assert_allclose(store.moments[row, 1], (expected.astype(float) ** 2).mean(axis=(1, 2)))
    assert not (tmp_path / "store.partial").exists()

    build_store(tmp_path / "store", job, workers=2, chunk=8)  # same job: reused, nothing decoded
    assert len(reads(log)) == 40
    build_store(tmp_path / "store", DecodeJob(job.pngs, prefixes, SIZE // 2), workers=1)  # new size: rebuilt
    assert len(reads(log)) == 80 and ImageStore(tmp_path / "store").image_size == SIZE // 2


def test_store_reader_pickles_without_its_memory_map(png_tree, tmp_path):
    import pickle

    root, prefixes = png_tree
    build_store(tmp_path / "s", DecodeJob(PngSites(root), prefixes, SIZE), workers=1)
    store = ImageStore(tmp_path / "s")
    first = store.read(3).copy()
    clone = pickle.loads(pickle.dumps(store))
    assert clone._images is None
    np.testing.assert_array_equal(clone.read(3), first)


def test_an_interrupted_build_is_never_a_store_and_resumes(png_tree, tmp_path):
    root, prefixes = png_tree
    log = tmp_path / "reads.txt"
    path = tmp_path / "store"
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_store(path, DecodeJob(CountingSites(root, log, fail_after=20), prefixes, SIZE), workers=1, chunk=8)
    with pytest.raises(StoreError, match="no complete image store .* interrupted build is staged"):
        ImageStore(path)
    log.unlink()
    build_store(path, DecodeJob(CountingSites(root, log), prefixes, SIZE), workers=1, chunk=8)
    assert sorted(reads(log)) == sorted(prefixes[16:])  # chunks 0 and 1 were done before the crash
    np.testing.assert_array_equal(ImageStore(path).images, np.stack([read_site(root, p, SIZE) for p in prefixes]))


def test_a_build_killed_with_sigkill_resumes(png_tree, tmp_path):
    root, prefixes = png_tree
    path = tmp_path / "store"
    script = (
        "import sys, time; from pathlib import Path\n"
        "from rxrx1_pipeline.storage.images import DecodeJob, PngSites, build_store\n"
        "from tests.test_images import SlowSites as Slow\n"
        "if __name__ == '__main__':\n"
        f"    build_store(Path({str(path)!r}), DecodeJob(Slow(Path({str(root)!r})), {prefixes!r}, {SIZE}), 2, 4)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, cwd=ROOT)
    done = path.with_name("store.partial") / "done.npy"
    deadline = time.time() + 60
    while time.time() < deadline and not (done.exists() and np.load(done).sum() >= 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the main process only: its decoding processes must follow it
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _session_alive(proc.pid):
        time.sleep(0.1)
    assert not _session_alive(proc.pid), "decoding processes outlived the killed build"
    assert not (path / "manifest.json").exists()
    finished = int(np.load(done).sum())
    assert 2 <= finished < 10
    log = tmp_path / "reads.txt"
    build_store(path, DecodeJob(CountingSites(root, log), prefixes, SIZE), workers=1, chunk=4)
    assert len(reads(log)) == 40 - 4 * finished
    np.testing.assert_array_equal(ImageStore(path).images, np.stack([read_site(root, p, SIZE) for p in prefixes]))


def _session_alive(sid: int) -> bool:
    out = subprocess.run(["ps", "-o", "pid=", "-s", str(sid)], capture_output=True, text=True).stdout
    return bool(out.strip())


def test_too_little_disk_fails_before_writing(png_tree, tmp_path, monkeypatch):
    import shutil

    root, prefixes = png_tree
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    needed = 40 * 6 * SIZE * SIZE + 40 * 2 * 6 * 8
    with pytest.raises(StoreError, match=rf"needs 0\.00 GiB \({needed} bytes\) but only 0\.00 GiB \(1000 bytes\)"):
        build_store(tmp_path / "store", DecodeJob(PngSites(root), prefixes, SIZE), workers=1)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_png_names_the_file(png_tree, tmp_path):
    import shutil

    root, prefixes = png_tree
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    victim = copy / f"{prefixes[7]}_w3.png"
    victim.unlink()
    with pytest.raises(OSError, match=f"cannot read image {victim}"):
        build_store(tmp_path / "store", DecodeJob(PngSites(copy), prefixes, SIZE), workers=2, chunk=8)
    victim.write_bytes(b"not a png")
    with pytest.raises(OSError, match=f"cannot read image {victim}"):
        build_store(tmp_path / "store", DecodeJob(PngSites(copy), prefixes, SIZE), workers=1)
    assert not (tmp_path / "store").exists()  # every PNG header is checked before the staging is made
    assert not (tmp_path / "store.partial").exists()


def test_site_images_save_swaps_in_complete_trees_only(tmp_path):
    from kedro.io import DatasetError

    site = np.full((6, 4, 4), 7, np.uint8)
    dataset = SiteImagesDataset(path=str(tmp_path), workers=1)
    dataset.save({"train/X-01/Plate1/B02_s1": site, "test/X-02/Plate1/B02_s1": site})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train"]

    def broken():
        raise RuntimeError("interrupted")

    with pytest.raises(DatasetError, match="Failed while saving") as failure:
        dataset.save({"train/X-01/Plate1/B03_s1": site, "test/X-02/Plate1/B03_s1": broken})
    assert "interrupted" in repr(failure.value.__cause__)
    assert dataset.load().prefixes() == ["test/X-02/Plate1/B02_s1", "train/X-01/Plate1/B02_s1"]  # untouched
    dataset.save({"train/X-03/Plate2/C05_s2": site})  # train/ is replaced as a whole, test/ is kept
    assert dataset.load().prefixes() == ["test/X-02/Plate1/B02_s1", "train/X-03/Plate2/C05_s2"]
    np.testing.assert_array_equal(dataset.load().read("train/X-03/Plate2/C05_s2"), site)


def test_a_regenerated_tree_is_decoded_again(tmp_path):
    """The store key covers the files, not only their names: rewriting the tree rebuilds the store."""
    dataset = SiteImagesDataset(path=str(tmp_path / "pngs"), workers=1)
    prefixes = ("train/X-01/Plate1/B02_s1", "train/X-01/Plate1/B03_s1")
    dataset.save({p: np.full((6, 4, 4), 1, np.uint8) for p in prefixes})
    build_store(tmp_path / "store", DecodeJob(dataset.load(), prefixes, 4), workers=1)
    dataset.save({p: np.full((6, 4, 4), 2, np.uint8) for p in prefixes})  # same names, new pixels
    build_store(tmp_path / "store", DecodeJob(dataset.load(), prefixes, 4), workers=1)
    assert (ImageStore(tmp_path / "store").images == 2).all()


def test_one_png_rewritten_in_place_is_decoded_again(tmp_path):
    """The store key covers every file it reads: fixing one PNG of one channel rebuilds the store."""
    from PIL import Image

    dataset = SiteImagesDataset(path=str(tmp_path / "pngs"), workers=1)
    prefixes = tuple(f"train/X-01/Plate1/B{w:02d}_s1" for w in range(2, 40))
    dataset.save({p: np.full((6, 4, 4), 1, np.uint8) for p in prefixes})
    build_store(tmp_path / "store", DecodeJob(dataset.load(), prefixes, 4), workers=1)
    Image.fromarray(np.full((4, 4), 9, np.uint8)).save(tmp_path / "pngs" / f"{prefixes[17]}_w4.png")
    build_store(tmp_path / "store", DecodeJob(dataset.load(), prefixes, 4), workers=1)
    images = ImageStore(tmp_path / "store").images
    assert (images[17, 3] == 9).all() and (np.delete(images, 17, axis=0) == 1).all()


def test_writing_a_site_tree_logs_its_progress_when_no_terminal_shows_a_bar(tmp_path, caplog):
    import logging

    image = np.zeros((6, 8, 8), np.uint8)
    sites = {f"train/HEPG2-01/Plate1/B{w:02d}_s1": image for w in range(2, 22)}
    with caplog.at_level(logging.INFO, logger="rxrx1_pipeline.kedro_io.datasets"):
        SiteImagesDataset(path=str(tmp_path / "tree"), workers=2).save(sites)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("writing sites")]
    assert lines[0] == "writing sites: 2 of 20 (10%)" and lines[-1] == "writing sites: 20 of 20 (100%)"
    assert len(lines) == 10


def test_a_complete_store_is_reused_while_another_process_builds_beside_it(png_tree, tmp_path):
    """The machines of one training on several machines all run the model-input nodes on the shared output root:
    a complete store of the same job is reused without its build lock; a store to build is refused, naming the
    holder."""
    from rxrx1_pipeline.runs.locks import LockError

    root, prefixes = png_tree
    job = DecodeJob(PngSites(root), prefixes, SIZE)
    build_store(tmp_path / "store", job, workers=1)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rxrx1_pipeline.runs.locks import FileLock; "
        f"lock = FileLock({str(tmp_path / '.store.lock')!r}, 'image store'); lock.acquire(); "
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        build_store(tmp_path / "store", job, workers=1)  # reused beside the holder
        with pytest.raises(LockError, match=rf"image store .*store \(being built\) is in use by another run: pid "
                                            rf"{holder.pid}"):
            build_store(tmp_path / "store", DecodeJob(job.pngs, prefixes, SIZE // 2), workers=1)
    finally:
        holder.kill()
        holder.wait()
