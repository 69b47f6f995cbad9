"""Sites per second of the training data path: PNG decoding versus the decoded cache.

Run after `kedro run --pipelines=synthetic,ingest` (or on any data_root with wells/sites ingested):
    .venv/bin/python benchmarks/data_loading.py [--cell-line HEPG2] [--data-root data/01_raw/synthetic]
Prints sites/s for each reader and worker count, and the model's training step rate for comparison.
"""

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from rxrx1_pipeline.model import EmbeddingNet, SiteImages, loader
from rxrx1_pipeline.pipelines.train.nodes import decode_sites, select_sites

ROOT = Path(__file__).resolve().parents[1]


def rate(data) -> float:
    start, n = time.perf_counter(), 0
    for images, _, _ in data:
        n += len(images)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell-line", default="HEPG2")
    parser.add_argument("--data-root", default=str(ROOT / "data/01_raw/synthetic"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--arch", default="test_resnet")
    args = parser.parse_args()
    inter = ROOT / "data/02_intermediate"
    wells, sites = pd.read_parquet(inter / "wells.parquet"), pd.read_parquet(inter / "sites.parquet")
    classes = pd.read_parquet(inter / "classes.parquet")
    model = {"valid_experiments": 1, "image_size": args.image_size, "batch_size": 64, "num_workers": 2,
             "decoded_cache": True}
    table = select_sites(wells, sites, classes, args.cell_line, model)
    fit = table[table["role"] == "fit"]
    start = time.perf_counter()
    cache = decode_sites(table, args.data_root, model)
    decode_s = time.perf_counter() - start
    print(f"{args.cell_line}: {len(fit)} fit sites of {len(table)}; decoding all into the cache took "
          f"{decode_s:.1f} s ({len(table) / decode_s:.0f} sites/s, {cache.nbytes / 2**20:.0f} MiB)")
    for workers in (0, 2):
        png = rate(loader(SiteImages(fit, args.data_root, args.image_size, augment=True), 64, workers))
        print(f"PNG reader, {workers} workers: {png:8.0f} sites/s")
    cached = rate(loader(SiteImages(fit, args.data_root, args.image_size, cache, augment=True), 64, 0))
    print(f"decoded cache, 0 workers: {cached:8.0f} sites/s")
    net = EmbeddingNet(args.arch, len(classes), 128)
    opt = torch.optim.AdamW(net.parameters())
    x, y = torch.randn(64, 6, args.image_size, args.image_size), torch.zeros(64, dtype=torch.long)
    start = time.perf_counter()
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(net.logits(net(x), y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"training step ({args.arch}, {args.image_size} px): {5 * 64 / (time.perf_counter() - start):8.0f} sites/s")


if __name__ == "__main__":
    main()
