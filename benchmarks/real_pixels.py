"""Real RxRx1 pixels at 512 px on this machine: PNG decode rate, bytes per stored site, each image source's
sites/s per loader process, and the CPU train-step time per site.

Reads the complete real sites (all six channels) under ``--images`` (default ../shared/rxrx1/images, the
Kaggle layout), and prints one table. Every rate is per process unless the row says otherwise.

    .venv/bin/python benchmarks/real_pixels.py [--images DIR] [--passes 5] [--archs test_resnet resnet18 densenet121]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from rxrx1_pipeline.schema import ImageSource
from rxrx1_pipeline.storage.images import CHANNELS, DecodeJob, PngSites, build_store, open_store, read_site

ROOT = Path(__file__).resolve().parents[1]
REAL_SITES = 125_510  # sites of the real RxRx1 (train + test, 2 per well)


def complete_prefixes(root: Path) -> list[str]:
    """Every site under ``root`` whose six channel PNGs are all present."""
    prefixes = sorted({str(p.relative_to(root))[: -len("_w1.png")] for p in root.glob("*/*/*/*_w1.png")})
    return [p for p in prefixes if all((root / f"{p}_w{c}.png").is_file() for c in CHANNELS)]


def decode_pass(args) -> int:
    root, prefixes, passes = args
    for _ in range(passes):
        for p in prefixes:
            read_site(Path(root), p)
    return passes * len(prefixes)


def decode_rates(root: Path, prefixes: list[str], passes: int, processes: int) -> float:
    """Sites/s of decoding the six 512 px PNGs of each site, in ``processes`` processes together."""
    if processes == 1:
        start = time.perf_counter()
        n = decode_pass((root, prefixes, passes))
        return n / (time.perf_counter() - start)
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        list(pool.map(decode_pass, [(root, prefixes[:1], 1)] * processes))  # start-up outside the timing
        start = time.perf_counter()
        n = sum(pool.map(decode_pass, [(root, prefixes, passes)] * processes))
        return n / (time.perf_counter() - start)


def loader_rate(store, passes: int, batch: int = 8) -> float:
    """Sites/s of the training loader reading ``store`` in this process (0 workers: one loader process)."""
    from rxrx1_pipeline.nn.data import StoreSites, fit_loader

    rows = np.resize(np.arange(len(store)), len(store) * passes)
    data = fit_loader(StoreSites(store, rows), np.zeros(len(rows)), batch, 0, seed=0)
    start, n = time.perf_counter(), 0
    for images, _, _ in data:
        n += len(images)
    return n / (time.perf_counter() - start)


def train_step_seconds(arch: str, size: int, batch: int, steps: int) -> float:
    """Seconds per site of one training step (forward, backward, AdamW) on the CPU, channels_last."""
    import torch

    from rxrx1_pipeline.nn.network import EmbeddingNet

    net = EmbeddingNet(arch, 1139, 128)
    net.channels_last = True
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 6, size, size), torch.randint(1139, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(net.logits(net(x).float(), y), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / (steps * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "rxrx1" / "images")
    parser.add_argument("--passes", type=int, default=5, help="passes over the real sites per timing")
    parser.add_argument("--archs", nargs="+", default=["test_resnet", "resnet18", "densenet121"])
    args = parser.parse_args()
    import torch

    prefixes = complete_prefixes(args.images)
    if not prefixes:
        raise SystemExit(f"no complete site (six PNGs) under {args.images}")
    cores = os.cpu_count() or 1
    print(f"{len(prefixes)} complete real sites under {args.images}; {cores} cores, torch threads "
          f"{torch.get_num_threads()}")
    rows = [("PNG decode at 512 px, 1 process", f"{decode_rates(args.images, prefixes, args.passes, 1):.1f} sites/s")]
    if cores > 1:
        rate = decode_rates(args.images, prefixes, args.passes, cores)
        rows.append((f"PNG decode at 512 px, {cores} processes together", f"{rate:.1f} sites/s"))
    with tempfile.TemporaryDirectory(prefix="real-pixels-") as tmp:
        reader = PngSites(args.images)
        for label, size, pixels, fit in (("(a) store, 512 px", 512, "store", "resize"),
                                         ("(b) store, 384 px resized", 384, "store", "resize"),
                                         ("(b) store, 384 px centre crop", 384, "store", "crop"),
                                         ("(b) store, 256 px resized", 256, "store", "resize"),
                                         ("(c) PNGs decoded by the loader, 512 px", 512, "png", "resize"),
                                         ("(c) PNGs decoded by the loader, 384 px crop", 384, "png", "crop")):
            path = Path(tmp) / f"{pixels}-{fit}-{size}"
            build_store(path, DecodeJob(reader, tuple(prefixes), size, ImageSource(source=pixels, fit=fit)), workers=1)
            store = open_store(path)
            per_site = store.nbytes() / len(store)
            rate = loader_rate(store, args.passes if pixels == "png" else 50 * args.passes)
            disk = REAL_SITES * DecodeJob(reader, ("x",), size, ImageSource(source=pixels, fit=fit)).store_bytes()
            rows.append((f"{label}: loader, 1 process", f"{rate:.1f} sites/s; {per_site:,.0f} B/site stored; "
                                                       f"real data {disk / 2**30:.1f} GiB"))
    for arch in args.archs:
        batch = 8 if arch in ("test_resnet", "resnet18") else 2
        seconds = train_step_seconds(arch, 512, batch, steps=2)
        rows.append((f"train step {arch}, 512 px, batch {batch}, CPU", f"{seconds:.3f} s/site ({1 / seconds:.2f} sites/s)"))
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
