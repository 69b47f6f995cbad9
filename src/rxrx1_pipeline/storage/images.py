"""Site images on disk, without torch: the RxRx1 PNG tree and the decode-once image store.

Both readers are small picklable objects, so DataLoader worker processes can each open their own.

The image store holds every site of one table decoded once at one pixel size, as a memory-mapped
(N, 6, S, S) uint8 array, plus each site's per-channel pixel moments (mean and mean of squares),
from which plate statistics are derived without reading a pixel again. It is built in a staging
folder that only becomes the store once every site is in; an interrupted build resumes from the
chunks already done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from rxrx1_pipeline.leak.plates import CHANNELS
from rxrx1_pipeline.schema import ImageSource

log = logging.getLogger(__name__)

N_CHANNELS = len(CHANNELS)
# Per-plate channel statistics columns (the plate_stats table and the per-plate normaliser).
STAT_COLUMNS = [f"{s}_w{c}" for s in ("mean", "std") for c in CHANNELS]


def write_site(root: Path, prefix: str, image: np.ndarray) -> None:
    """Write one site's (6, H, W) uint8 array as six PNGs."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] != N_CHANNELS:
        raise ValueError(f"{prefix}: expected a (6, H, W) uint8 array, got {image.dtype} {image.shape}")
    target = root / PurePosixPath(prefix)
    target.parent.mkdir(parents=True, exist_ok=True)
    for c, channel in zip(CHANNELS, image):
        Image.fromarray(channel).save(f"{target}_w{c}.png", compress_level=1)


class ImageFormatError(ValueError):
    """A PNG that is not 8-bit single-channel, or not the size of its site's other channels; names the file."""


# The modes a PNG can open as in Pillow: (bits per channel, channels).
_MODES = {"1": (1, 1), "L": (8, 1), "P": (8, 1), "LA": (8, 2), "RGB": (8, 3), "RGBA": (8, 4), "I;16": (16, 1),
          "I;16B": (16, 1), "I": (32, 1), "F": (32, 1)}


def describe_image(im) -> str:
    """What an opened image is, e.g. ``mode I;16 (16-bit, 1 channel), 512 x 512 px``."""
    bits, channels = _MODES.get(im.mode, ("?", len(im.getbands())))
    palette = ", palette" if im.mode == "P" else ""
    return (f"mode {im.mode} ({bits}-bit, {channels} channel{'s' if channels > 1 else ''}{palette}), "
            f"{im.size[0]} x {im.size[1]} px")


def _check_channel(file: Path, im, first: tuple[Path, tuple[int, int]] | None) -> tuple[Path, tuple[int, int]]:
    """Refuse a channel image that is not 8-bit single-channel (mode L) or not the size of the site's first
    channel ``first`` (file, size); returns the first channel's (file, size)."""
    if im.mode != "L":
        raise ImageFormatError(f"image {file} is {describe_image(im)}: every RxRx1 image must be an 8-bit "
                               "single-channel PNG (mode L); convert the images to 8 bits (scaling, not clipping) "
                               "before running")
    if first is not None and im.size != first[1]:
        raise ImageFormatError(f"image {file} is {im.size[0]} x {im.size[1]} px but {first[0].name} of the same "
                               f"site is {first[1][0]} x {first[1][1]} px: the six channels of a site must have "
                               "one size")
    return first or (file, im.size)


def check_pngs(source: "PngSites", prefixes) -> None:
    """Open the header of every PNG of these sites (no pixels decoded) and refuse, naming the file, any that
    is not 8-bit single-channel, not the size of its site's other channels, or not the data set's most common size
    (a site of another resolution, e.g. another magnification, would be resized to the others' scale without a
    word: its cells would look larger or smaller than every other site's); missing files too."""
    from PIL import Image

    sizes: dict[tuple[int, int], list[Path]] = {}  # each site size: the first channel files of its sites
    for prefix in prefixes:
        first = None
        for c in CHANNELS:
            file = Path(source.root) / f"{prefix}_w{c}.png"
            try:
                with Image.open(file) as im:
                    first = _check_channel(file, im, first)
            except ImageFormatError:
                raise
            except (OSError, ValueError) as exc:
                raise OSError(f"cannot read image {file}: {exc}") from exc
        sizes.setdefault(first[1], []).append(first[0])
    if len(sizes) > 1:  # name a site of a rarer size against the most common one
        (common, usual), *rest = sorted(sizes.items(), key=lambda item: -len(item[1]))
        (size, odd), others = rest[-1], sum(len(files) for _, files in rest) - 1
        raise ImageFormatError(f"image {odd[0]} is {size[0]} x {size[1]} px but the other sites are {common[0]} x "
                               f"{common[1]} px (e.g. {usual[0]})" + (f"; {others} more sites of other sizes" if others
                                                                       else "")
                               + ": every site of a data set must have one resolution, or a site would be resized "
                               "to another scale without a word; resize or crop the odd sites yourself if that is "
                               "what you want")


def read_site(root: Path, prefix: str, size: int | None = None) -> np.ndarray:
    """Read one site's six PNGs as (6, H, W) uint8, optionally resized to ``size``.

    A missing or unreadable image raises an error naming the file; so does one that is not 8-bit
    single-channel or not the size of the site's other channels (:class:`ImageFormatError`).
    """
    from PIL import Image

    channels, first = [], None
    for c in CHANNELS:
        file = Path(root) / f"{prefix}_w{c}.png"
        try:
            with Image.open(file) as im:
                first = _check_channel(file, im, first)
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                channels.append(np.asarray(im))
        except ImageFormatError:
            raise
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot read image {file}: {exc}") from exc
    return np.stack(channels)


@dataclass(frozen=True)
class PngSites:
    """Reader of an RxRx1 PNG tree: ``read(prefix, size)``; prefix e.g. ``train/HEPG2-01/Plate1/B02_s1``."""

    root: Path

    def read(self, prefix: str, size: int | None = None) -> np.ndarray:
        return read_site(self.root, prefix, size)

    def prefixes(self) -> list[str]:
        """Every site of the tree (lists the whole tree: slow on the real data)."""
        return sorted({str(p.relative_to(self.root))[: -len("_w1.png")]
                       for p in self.root.glob("*/*/*/*_w1.png")})




def centre_crop(image: np.ndarray, size: int, prefix: str = "") -> np.ndarray:
    """The centre ``size`` x ``size`` of a (6, H, W) site; an image smaller than ``size`` is an error."""
    height, width = image.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"{prefix}: cannot crop {size} x {size} px from a {height} x {width} px image "
                         "(images.fit: crop needs images at least training.image_size; use images.fit: resize)")
    top, left = (height - size) // 2, (width - size) // 2
    return image[:, top:top + size, left:left + size]


def read_fitted(source: PngSites, prefix: str, size: int, fit: str) -> np.ndarray:
    """One site at ``size`` px: resized from its PNGs (``fit`` resize) or their centre cropped (``crop``)."""
    if fit == "crop":
        return np.ascontiguousarray(centre_crop(source.read(prefix), size, f"{source.root}/{prefix}_w*.png"))
    return source.read(prefix, size)


@dataclass(frozen=True)
class DecodeJob:
    """What an image store should hold: these sites of the PNG tree ``pngs``, at ``image_size`` px, as the
    ``images`` block says (``schema.ImageSource``: its ``fit`` resizes or centre-crops; its ``source`` "store"
    decodes them once into the store, "png" stores only their moments and list, and every read decodes the
    PNGs again: :class:`PngStore`)."""

    pngs: PngSites
    prefixes: tuple[str, ...]
    image_size: int
    images: ImageSource = ImageSource()

    def store_bytes(self) -> int:
        """Disk the store needs: the pixels (store only) and the per-site moments (the site list, ~40 bytes a
        site, aside)."""
        pixels = len(self.prefixes) * N_CHANNELS * self.image_size ** 2 if self.images.source == "store" else 0
        return pixels + len(self.prefixes) * 2 * N_CHANNELS * 8

    def key(self) -> dict:
        """Identifies the store's content: source, size, the sites, and a fingerprint of every file it reads (the
        size and modification time of each site's six PNGs: about 1 s per 100,000 files, no pixel read), so a
        regenerated tree, or one PNG rewritten in place, is decoded again (and the models on it retrained)."""
        root = Path(self.pngs.root).resolve()
        digest = hashlib.sha1("\n".join(self.prefixes).encode()).hexdigest()
        files = hashlib.sha1()
        for prefix in self.prefixes:
            files.update(json.dumps([_stat(root / f"{prefix}_w{c}.png") for c in CHANNELS]).encode())
        files = files.hexdigest()
        return {"source": str(root), "image_size": int(self.image_size), "sites": len(self.prefixes),
                "prefixes_sha1": digest, "files_sha1": files, "pixels": self.images.source,
                "fit": self.images.fit}


def _stat(path: Path) -> list[int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return [-1]
    return [st.st_ino, st.st_size, st.st_mtime_ns]


class StoreError(RuntimeError):
    """The image store is missing, incomplete, or cannot be built; the message says which and where."""


IMAGES, MOMENTS, MANIFEST, DONE = "images.npy", "moments.npy", "manifest.json", "done.npy"
PREFIXES = "prefixes.json"  # the sites in row order (a PNG-backed store reads them from it)
CHUNK = 256  # sites per decoding task; the unit of resumption


def staging_path(path: Path) -> Path:
    """Where a store is built before it replaces ``path``."""
    return Path(path).with_name(Path(path).name + ".partial")


class ImageStore:
    """A complete store: ``read(row)`` -> (6, S, S) uint8 view; ``moments`` (N, 2, 6) float64."""

    def __init__(self, path: Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            partial = (" (an interrupted build is staged; re-run decode_sites to finish it)"
                       if staging_path(self.path).is_dir() else "")
            raise StoreError(f"no complete image store at {self.path}{partial}")
        self.manifest = json.loads(manifest.read_text())
        self.image_size = int(self.manifest["image_size"])
        self._images = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}  # each process maps the file itself

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.path / IMAGES, mmap_mode="r")
        return self._images

    @property
    def moments(self) -> np.ndarray:
        return np.load(self.path / MOMENTS)

    def __len__(self) -> int:
        return int(self.manifest["sites"])

    def read(self, row: int) -> np.ndarray:
        return self.images[row]

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


class PngStore(ImageStore):
    """A store without pixels (``images.source: png``): ``read(row)`` decodes the row's six PNGs, at the
    store's size and fit, in the calling process (a DataLoader worker); ``moments``, ``len``, ``image_size``
    and ``manifest`` (its identity) as for :class:`ImageStore`."""

    def __init__(self, path: Path):
        super().__init__(path)
        if self.manifest.get("pixels") != "png":
            raise StoreError(f"{self.path} holds decoded pixels, not a PNG source; open it with open_store")
        self.source, self.fit = PngSites(Path(self.manifest["source"])), self.manifest["fit"]
        self.prefixes = json.loads((self.path / PREFIXES).read_text())

    @property
    def images(self) -> np.ndarray:
        raise StoreError(f"{self.path} is a PNG source (images.source: png): it holds no pixel array; read(row)")

    def read(self, row: int) -> np.ndarray:
        return read_fitted(self.source, self.prefixes[row], self.image_size, self.fit)


def open_store(path: Path) -> ImageStore:
    """The store at ``path``: an :class:`ImageStore` of decoded pixels, or a :class:`PngStore` that decodes
    the PNGs on every read, as its manifest says."""
    store = ImageStore(path)
    return PngStore(path) if store.manifest.get("pixels") == "png" else store


def _manifest(folder: Path) -> dict | None:
    file = folder / MANIFEST
    return json.loads(file.read_text()) if file.is_file() else None


def _one_builder(build):
    """Only one process builds a store at a time: a lock file beside it (``.<store>.lock``) names the builder;
    a second build fails at once naming it, and the lock of a killed build is taken over (the build resumes).
    A complete store of the same job is reused without the lock (a store is swapped in whole), so the machines
    of one training on several machines, which all run the model-input nodes, reuse it side by side."""
    import functools

    @functools.wraps(build)
    def locked(path, job: DecodeJob, *args, **kwargs):
        from rxrx1_pipeline.runs.locks import FileLock

        describe_source(Path(path), job)
        if _manifest(Path(path)) == job.key():
            log.info("Image store %s already holds these %d sites at %d px; reusing it", path, len(job.prefixes),
                     job.image_size)
            return None
        lock = Path(path).with_name(f".{Path(path).name}.lock")
        with FileLock(lock, f"image store {path} (being built)"):
            return build(path, job, *args, **kwargs)

    return locked


@_one_builder
def build_store(path: Path, job: DecodeJob, workers: int | None = None, chunk: int = CHUNK) -> None:
    """Decode ``job`` into a store at ``path`` (:func:`_one_builder` reuses a complete store of the same job).

    Decoding runs in ``workers`` processes (default: all cores) over chunks of ``chunk`` sites written
    straight into staging memmaps; finished chunks are recorded, so a killed build resumes where it stopped.
    The staging folder replaces the store only when every chunk is in.
    """
    from tqdm.auto import tqdm

    path, key = Path(path), job.key()
    if _manifest(path) == key:  # completed by another run between the check before the lock and the lock
        return
    staging = staging_path(path)
    shape = (len(job.prefixes), N_CHANNELS, job.image_size, job.image_size)
    staged = {**key, "chunk": chunk}
    resumable = _manifest(staging) == staged and (staging / DONE).is_file()
    if not resumable:
        check_pngs(job.pngs, job.prefixes)  # every header, before anything is written
        shutil.rmtree(staging, ignore_errors=True)
        check_free_space(path, job.store_bytes())
        staging.mkdir(parents=True)
        if job.images.source == "store":
            np.lib.format.open_memmap(staging / IMAGES, mode="w+", dtype=np.uint8, shape=shape).flush()
        np.lib.format.open_memmap(staging / MOMENTS, mode="w+", dtype=np.float64,
                                  shape=(shape[0], 2, N_CHANNELS)).flush()
        _save_atomic(staging / DONE, np.zeros(-(-shape[0] // chunk), bool))
        (staging / MANIFEST).write_text(json.dumps(staged))
    done = np.load(staging / DONE)
    todo = np.flatnonzero(~done)
    tasks = [(staging, job.pngs, job.prefixes[c * chunk:(c + 1) * chunk], int(c) * chunk, job.image_size,
              job.images.fit, job.images.source == "store") for c in todo]
    already = shape[0] - sum(len(t[2]) for t in tasks)
    if already:
        log.info("Image store %s: resuming, %d of %d sites already decoded", path, already, shape[0])
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_exit_with_parent,
                               initargs=(os.getpid(),)) if workers > 1 else None
    what = "decoding sites" if job.images.source == "store" else "site statistics from the PNGs"
    bar = tqdm(total=shape[0], initial=already, desc=f"{what} ({workers} processes)", unit="site",
               mininterval=2, disable=None)
    try:
        for c, n in zip(todo, (pool.map if pool else map)(_decode_chunk, tasks)):
            done[c] = True  # the chunk's pixels and moments are flushed to disk by now
            _save_atomic(staging / DONE, done)
            bar.update(n)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    (staging / PREFIXES).write_text(json.dumps(list(job.prefixes)))
    (staging / MANIFEST).write_text(json.dumps(key))
    (staging / DONE).unlink()
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    staging.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    log.info("Image store %s: %d sites at %d px (%s), %.1f MiB", path, shape[0], job.image_size,
             "decoded pixels" if job.images.source == "store" else "statistics only; pixels read from the PNGs",
             ImageStore(path).nbytes() / 2**20)


def describe_source(path: Path, job: DecodeJob) -> None:
    """Log where training will read this store's pixels from, and the disk that needs."""
    gib = job.store_bytes() / 2**30
    how = f"{job.image_size} px, {'resized' if job.images.fit == 'resize' else 'centre-cropped'}"
    if job.images.source == "store":
        log.info("Images of %s: decode-once store (images.source: store) of %d sites at %s: %.2f GiB on disk "
                 "(%d bytes per site)", path, len(job.prefixes), how, gib, N_CHANNELS * job.image_size ** 2)
    else:
        log.info("Images of %s: the PNGs under %s decoded by the loader on every read (images.source: png) "
                 "at %s; no pixel store, %.3f GiB of per-site statistics on disk", path, job.pngs.root,
                 how, gib)


def _exit_with_parent(parent: int) -> None:
    """In a decoding process: exit when the building process is gone (killed), instead of lingering."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _decode_chunk(task) -> int:
    """Decode one chunk of sites into the staging memmaps (pixels and per-site moments); returns its size."""
    staging, source, prefixes, start, size, fit, pixels = task
    images = np.load(staging / IMAGES, mmap_mode="r+") if pixels else None
    moments = np.load(staging / MOMENTS, mmap_mode="r+")
    for i, prefix in enumerate(prefixes):
        image = read_fitted(source, prefix, size, fit)
        if images is not None:
            images[start + i] = image
        moments[start + i] = site_moments(image)
    if images is not None:
        images.flush()
    moments.flush()
    return len(prefixes)


def site_moments(image: np.ndarray) -> np.ndarray:
    """One (6, S, S) site's per-channel pixel mean and mean of squares, (2, 6) float64: what plate statistics
    are summed from."""
    x = image.astype(np.float64)
    return np.stack([x.mean(axis=(1, 2)), (x**2).mean(axis=(1, 2))])


class MemoryStore:
    """Sites read once into memory, with the reading interface of :class:`ImageStore` (``read(row)``,
    ``moments``, ``image_size``, ``len``): the scoring model's images of a new experiment."""

    def __init__(self, images: np.ndarray):
        self.images = images
        self.image_size = int(images.shape[-1])
        self.moments = np.zeros((len(images), 2, N_CHANNELS))
        for row, image in enumerate(images):
            self.moments[row] = site_moments(image)

    def __len__(self) -> int:
        return len(self.images)

    def read(self, row: int) -> np.ndarray:
        return self.images[row]


def _save_atomic(file: Path, array: np.ndarray) -> None:
    tmp = file.with_name(file.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, file)


def check_free_space(path: Path, needed: int) -> None:
    """Fail before writing when the disk holding ``path`` has less than ``needed`` bytes free."""
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise StoreError(f"image store {path} needs {needed / 2**30:.2f} GiB ({needed} bytes) but only "
                         f"{free / 2**30:.2f} GiB ({free} bytes) are free on that disk; point image_store_root "
                         "(conf globals) at a larger disk, or store smaller images (training.image_size, "
                         "images.fit: crop) or none (images.source: png; README: where images are read from)")


class StoreChain:
    """Several image stores read as one (the cell lines' stores for the shared model): row ``offsets[k] + r``
    is row ``r`` of store ``k``."""

    def __init__(self, stores: list[ImageStore]):
        sizes = {s.image_size for s in stores}
        if len(sizes) != 1:
            raise StoreError(f"the image stores hold different image sizes {sorted(sizes)}; set one "
                             "training.image_size for every cell line of a shared model")
        self.stores, self.image_size = list(stores), sizes.pop()
        self.offsets = np.cumsum([0] + [len(s) for s in stores])
        self.manifest = [s.manifest for s in stores]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, row: int) -> np.ndarray:
        k = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.stores[k].read(row - self.offsets[k])


def plate_statistics(model_sites: pd.DataFrame, site_images: ImageStore) -> pd.DataFrame:
    """Per-plate channel mean and std over all of the plate's own sites (no labels used), from the
    per-site moments the image store gathered while decoding."""
    moments = site_images.moments
    n_plates = int(model_sites["plate_index"].max()) + 1 if len(model_sites) else 0  # 0: a line without wells
    plate_of = model_sites["plate_index"].to_numpy()[np.argsort(model_sites["store_row"].to_numpy())]
    total = np.zeros((n_plates, N_CHANNELS))
    squares = np.zeros((n_plates, N_CHANNELS))
    np.add.at(total, plate_of, moments[:, 0])
    np.add.at(squares, plate_of, moments[:, 1])
    count = np.bincount(plate_of, minlength=n_plates).astype(float)
    mean = total / count[:, None]
    std = np.sqrt(np.maximum(squares / count[:, None] - mean**2, 0))
    stats = model_sites[["experiment", "plate", "plate_index"]].drop_duplicates().sort_values("plate_index")
    stats = stats.reset_index(drop=True)
    stats[STAT_COLUMNS] = np.hstack([mean, std])
    return stats
