"""Sites per second of each part of a training epoch, and which one bounds it.

Measures, on an ingested data set with its image store built (run the `train` pipeline once, or
`kedro run --pipelines=ingest` then `--pipelines=train --to-outputs=HEPG2.site_images`):
  1. PNG decoding (one process, and the store build over all cores),
  2. random-access reads from the store as the training loader does them (shuffled batches, N workers),
  3. the model's train step and inference step at the configured arch / image size / batch,
and prints a table, the bound, and the projected epoch time over the real data's ~81,000 labelled sites.

    .venv/bin/python benchmarks/throughput.py [--env rxrx1_shaped] [--cell-line HEPG2]
        [--arch densenet121] [--image-size 512] [--batch-size 32] [--workers 0 2] [--channels-last] [--compile]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
REAL_LABELLED_SITES = 81_224  # RxRx1 train: 36,515 treatment + 4,097 control wells, 2 sites each


def load_project(env: str | None, cell_line: str):
    """(training settings, model_sites, image store, raw PNG reader, class count) from the project's catalog."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=env) as session:
        context = session.load_context()
        catalog = context.catalog
        try:
            return (catalog.load(f"params:{cell_line}.training"), catalog.load(f"{cell_line}.model_sites"),
                    catalog.load(f"{cell_line}.site_images"), catalog.load("raw_site_images"),
                    len(catalog.load("classes")))
        except Exception as exc:
            raise SystemExit(f"{exc}\nBuild the inputs first: kedro run{f' --env={env}' if env else ''} "
                             f"--pipelines=ingest, then --pipelines=train --to-outputs={cell_line}.site_images")


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def png_rates(reader, prefixes: list[str], size: int, workers: int) -> tuple[float, float]:
    """(sites/s decoding in one process, sites/s building a store with ``workers`` processes)."""
    from rxrx1_pipeline.storage.images import DecodeJob, build_store

    start = time.perf_counter()
    for p in prefixes[:300]:
        reader.read(p, size)
    single = rate(min(300, len(prefixes)), time.perf_counter() - start)
    tmp = Path(tempfile.mkdtemp(prefix="throughput-store-"))
    try:
        start = time.perf_counter()
        build_store(tmp / "store", DecodeJob(reader, tuple(prefixes), size), workers=workers)
        parallel = rate(len(prefixes), time.perf_counter() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return single, parallel


def loader_rate(store, rows: np.ndarray, batch: int, workers: int, batches: int) -> float:
    """Sites/s of shuffled batches read from the store (with the in-process augmentation)."""
    from rxrx1_pipeline.nn.data import StoreSites, fit_loader, random_dihedral, views_of_step

    data = fit_loader(StoreSites(store, rows), np.zeros(len(rows)), batch, workers, seed=0)
    views = torch.Generator().manual_seed(0)
    n, start = 0, None
    for i, (images, _, _) in enumerate(data):
        if i == 1:  # the first batch pays for starting the workers
            n, start = 0, time.perf_counter()
        random_dihedral(images, views_of_step(views, len(images)))
        n += len(images)
        if i >= batches:
            break
    return rate(n, time.perf_counter() - start)


def model_rates(arch: str, size: int, batch: int, n_classes: int, device: torch.device, channels_last: bool,
                compile_: bool, steps: int) -> tuple[float, float]:
    """(train sites/s, inference sites/s with one view) on random batches, bf16 autocast on CUDA."""
    from rxrx1_pipeline.nn.network import EmbeddingNet

    net = EmbeddingNet(arch, n_classes, 128).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if compile_ else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 6, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(n_classes, (batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(net.logits(forward(x).float(), y), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.no_grad(), autocast:
            net.logits(forward(x).float())

    rates = []
    for step, mode in ((train_step, True), (infer_step, False)):
        net.train(mode)
        for _ in range(2):  # warm-up (and compilation)
            step()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(rate(steps * batch, time.perf_counter() - start))
    return rates[0], rates[1]


def optimiser_step_ms(training, n_classes: int, device: torch.device, steps: int) -> tuple[int, float, float]:
    """(weights, ms per Adam(W) step in its plain for-loop form, ms in the form the training uses:
    ``nn.loops.optimiser``'s, fused) over the configured network's weights (embedding size, neck and head as in
    ``training``)."""
    from rxrx1_pipeline.nn.loops import optimiser
    from rxrx1_pipeline.nn.network import EmbeddingNet

    net = EmbeddingNet(training.arch, n_classes, training.embedding_dim, training.head, neck=training.neck).to(device)
    params = list(net.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    used = optimiser(net, training, steps_per_epoch=1)[0]
    plain = type(used)(params, lr=training.lr, weight_decay=training.weight_decay, foreach=False)
    times = []
    for opt in (plain, used):
        for _ in range(2):
            opt.step()
        start = time.perf_counter()
        for _ in range(steps):
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start) / steps)
    return sum(p.numel() for p in params), times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None, help="Kedro environment, e.g. rxrx1_shaped")
    parser.add_argument("--cell-line", default="HEPG2")
    parser.add_argument("--arch", help="default: the cell line's training.arch")
    parser.add_argument("--image-size", type=int, help="default: training.image_size (model step only)")
    parser.add_argument("--batch-size", type=int, help="default: training.batch_size")
    parser.add_argument("--workers", type=int, nargs="+", help="loader workers to try (default: 0 and all cores)")
    parser.add_argument("--png-sites", type=int, default=6000, help="sites decoded for the PNG figures")
    parser.add_argument("--steps", type=int, default=10, help="timed model steps")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                        help="default: training.channels_last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    args = parser.parse_args()

    training, sites, store, reader, n_classes = load_project(args.env, args.cell_line)
    arch = args.arch or training.arch
    size = args.image_size or training.image_size
    batch = args.batch_size or training.batch_size
    channels_last = training.channels_last if args.channels_last is None else args.channels_last
    cores = os.cpu_count() or 1
    workers = args.workers or sorted({0, cores})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {cores} cores"
    print(f"{args.cell_line} ({args.env or 'base'}): {len(sites)} sites in a store of {store.image_size} px; "
          f"model {arch} at {size} px, batch {batch}, on {name}")

    prefixes = sites.sort_values("store_row")["w1"].str.slice(0, -len("_w1.png")).tolist()
    subset = prefixes[:: max(1, len(prefixes) // args.png_sites)][: args.png_sites]
    single, parallel = png_rates(reader, subset, store.image_size, cores)
    fit_rows = sites.loc[sites["role"] == "fit", "store_row"].to_numpy()
    rows = [("PNG decode, 1 process", single), (f"PNG decode into a store, {cores} processes", parallel)]
    for w in workers:
        rows.append((f"store reads, shuffled batches, {w} workers", loader_rate(store, fit_rows, batch, w, 50)))
    train, infer = model_rates(arch, size, batch, n_classes, device, channels_last, args.compile, args.steps)
    flags = "".join([", channels_last" if channels_last else "", ", compiled" if args.compile else ""])
    rows += [(f"train step ({arch}, {size} px{flags})", train),
             (f"inference step, 1 view ({arch}, {size} px{flags})", infer)]

    weights, plain_ms, fused_ms = optimiser_step_ms(training, n_classes, device, 20)

    width = max(len(r[0]) for r in rows)
    print(f"\n{'stage':<{width}}  sites/s")
    for label, value in rows:
        print(f"{label:<{width}}  {value:9.0f}")
    best_loader = max(r[1] for r in rows if r[0].startswith("store reads"))
    bound = "the model (compute)" if train < best_loader else "the loader (store reads)"
    epoch_rate = min(train, best_loader)
    print(f"\nAn epoch is bound by {bound}: {epoch_rate:.0f} sites/s -> {len(fit_rows) / epoch_rate:.1f} s over this "
          f"cell line's {len(fit_rows)} fit sites; {REAL_LABELLED_SITES / epoch_rate / 60:.1f} min over the real "
          f"data's {REAL_LABELLED_SITES} labelled sites at this size (store decode once: "
          f"{REAL_LABELLED_SITES / parallel / 60:.1f} min at the measured PNG rate).")
    print(f"Optimiser step ({training.optimizer}, {weights / 1e6:.2f} M weights: embedding {training.embedding_dim}, "
          f"{training.neck} neck, {training.head} head): {plain_ms:.1f} ms plain, {fused_ms:.1f} ms fused (used), "
          f"once every {training.accumulate_steps} batch(es).")


if __name__ == "__main__":
    main()
