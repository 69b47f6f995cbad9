"""Sites per second of the training data path: PNG decoding versus the decoded cache.

Run after `kedro run --pipelines=synthetic,ingest` (or on any data_root with wells/sites ingested):
    .venv/bin/python benchmarks/data_loading.py [--cell-line HEPG2] [--data-root data/01_raw/synthetic]
Prints sites/s for each reader and worker count, and of a whole training epoch fed by each.
"""

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

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
    conf = yaml.safe_load((ROOT / "conf/base/parameters_train.yml").read_text())
    model = {**conf[args.cell_line]["model"], "image_size": args.image_size, "decoded_cache": True}
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
    labels = torch.from_numpy(fit["class_index"].to_numpy(copy=True))

    def epoch(data) -> float:
        """Sites/s of one training epoch fed by ``data`` (reading and training share the cores)."""
        start, n = time.perf_counter(), 0
        for images, idx, _ in data:
            x, y = images.float() / 255, labels[idx]
            loss = torch.nn.functional.cross_entropy(net.logits(net(x), y), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(images)
        return n / (time.perf_counter() - start)

    png_epoch = epoch(loader(SiteImages(fit, args.data_root, args.image_size, augment=True), 64, 2))
    cached_epoch = epoch(loader(SiteImages(fit, args.data_root, args.image_size, cache, augment=True), 64, 0))
    print(f"training epoch ({args.arch}, {args.image_size} px): {png_epoch:6.0f} sites/s from PNGs (2 workers), "
          f"{cached_epoch:6.0f} sites/s from the cache")

if __name__ == "__main__":
    main()
