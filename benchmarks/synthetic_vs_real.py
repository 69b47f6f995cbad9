"""The synthetic images next to the real RxRx1 PNGs, channel by channel, on the same wells.

    .venv/bin/python benchmarks/synthetic_vs_real.py [--real ../shared/rxrx1/images] [--synthetic data/01_raw/synthetic]
        [--composite composite.png]

Both sides use the sites the real sample holds (../shared/rxrx1/images: the negative-control well B02, both
sites, of every plate of the first train experiment of each cell line and of plates 1-2 of a test HEPG2
experiment): on the synthetic side, B02 of every plate of each cell line's first train experiment and of
plates 1-2 of HEPG2's first test experiment. Per channel:

- intensity: mean, std, median and 99th percentile of the 8-bit pixels (each side at its own resolution);
- batch spread: the standard deviation of log mean intensity between the plates of one experiment (averaged
  over experiments) and between experiments (their mean over plates);
- structure, each site first resized to the synthetic side's pixel size (as the pipeline's image store does)
  and standardised on its own: the lag-1 autocorrelation (how smooth), the share of pixels above mean + 2 std
  (how much of the field is bright objects) and the kurtosis (how peaked: puncta, nuclei).

With no real images (no ../shared), prints the synthetic column only. Optionally writes an RGB composite of a
few synthetic sites (w1+w4 red, w2+w6 green, w3+w5 blue) to look at.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"(?P<split>train|test)/(?P<experiment>[^/]+)/Plate(?P<plate>\d)/B02_s(?P<site>\d)_w(?P<channel>\d)\.png$")


def sample_files(root: Path, real: bool) -> list[tuple[str, int, int, Path]]:
    """(experiment, plate, channel, path) of the B02 PNGs of the compared sample under ``root``."""
    files = []
    for path in sorted(root.glob("*/*/Plate*/B02_s*_w*.png")):
        m = NAME.search(path.relative_to(root).as_posix())
        if m:
            files.append((m["split"], m["experiment"], int(m["plate"]), int(m["channel"]), path))
    if real:
        return [f[1:] for f in files]
    first = {}  # the synthetic side: each cell line's first train experiment, HEPG2's first test experiment
    for split, experiment, *_ in files:
        first.setdefault((split, experiment.split("-")[0]), experiment)
    keep = {e for (split, line), e in first.items() if split == "train"}
    test = first.get(("test", "HEPG2"))
    return [f[1:] for f in files if f[1] in keep or (f[1] == test and f[2] in (1, 2))]


def structure(pixels: np.ndarray, size: int) -> tuple[float, float, float]:
    """Lag-1 autocorrelation, share above mean + 2 std and kurtosis of a site resized to ``size`` px."""
    if pixels.shape[0] != size:
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR, reducing_gap=None))
    x = pixels.astype(np.float64)
    z = (x - x.mean()) / max(x.std(), 1e-6)
    lag = 0.5 * ((z[1:] * z[:-1]).mean() + (z[:, 1:] * z[:, :-1]).mean())
    return lag, (z > 2).mean(), (z**4).mean() - 3


def channel_stats(files: list[tuple[str, int, int, Path]], channel: int, size: int) -> dict[str, float] | None:
    chosen = [(e, p, path) for e, p, c, path in files if c == channel]
    if not chosen:
        return None
    images = [np.asarray(Image.open(path)) for _, _, path in chosen]
    pixels = np.concatenate([i.ravel() for i in images]).astype(np.float64)
    means: dict[str, dict[int, list[float]]] = {}
    for (e, p, _), image in zip(chosen, images):
        means.setdefault(e, {}).setdefault(p, []).append(image.mean())
    plate_log = {e: np.log([np.mean(v) for v in plates.values()]) for e, plates in means.items()}
    between_plates = np.mean([v.std() for v in plate_log.values() if len(v) > 1])
    between_experiments = np.std([v.mean() for v in plate_log.values()])
    lag, bright, kurt = np.mean([structure(i, size) for i in images], axis=0)
    p50, p99 = np.percentile(pixels, [50, 99])
    return {"sites": len(images), "mean": pixels.mean(), "std": pixels.std(), "p50": p50, "p99": p99,
            "plates": between_plates, "experiments": between_experiments, "lag1": lag, "bright": bright,
            "kurtosis": kurt}


ROWS = [("sites", "sites", "{:.0f}"), ("mean", "intensity mean", "{:.1f}"), ("std", "intensity std", "{:.1f}"),
        ("p50", "intensity p50", "{:.0f}"), ("p99", "intensity p99", "{:.0f}"),
        ("plates", "sd log mean, between plates", "{:.2f}"),
        ("experiments", "sd log mean, between experiments", "{:.2f}"),
        ("lag1", "lag-1 autocorrelation", "{:.2f}"), ("bright", "share > mean + 2 sd", "{:.3f}"),
        ("kurtosis", "kurtosis", "{:.1f}")]


def composite(prefixes: list[Path]) -> np.ndarray:
    tiles = []
    for prefix in prefixes:
        ch = [np.asarray(Image.open(f"{prefix}_w{c}.png")).astype(np.float64) for c in range(1, 7)]
        rgb = np.stack([ch[0] + ch[3], ch[1] + ch[5], ch[2] + ch[4]], axis=-1)
        tiles.append(np.clip(rgb / max(np.percentile(rgb, 99.5), 1) * 255, 0, 255).astype(np.uint8))
    return np.concatenate(tiles, axis=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, default=ROOT.parent / "shared/rxrx1/images")
    parser.add_argument("--synthetic", type=Path, default=ROOT / "data/01_raw/synthetic")
    parser.add_argument("--composite", type=Path)
    args = parser.parse_args(argv)
    synthetic = sample_files(args.synthetic, real=False)
    if not synthetic:
        raise SystemExit(f"no synthetic images in {args.synthetic}: run `kedro run --pipelines=synthetic` first")
    size = np.asarray(Image.open(synthetic[0][3])).shape[0]
    real = sample_files(args.real, real=True) if args.real.is_dir() else []
    if not real:
        print(f"real images not found in {args.real}: showing the synthetic column only")
    print(f"Well B02, real {args.real} vs synthetic {args.synthetic} (structure at {size} px):")
    print(f"{'channel':<8}{'statistic':<34}{'real':>9}{'synthetic':>11}")
    for c in range(1, 7):
        s, r = channel_stats(synthetic, c, size), channel_stats(real, c, size) if real else None
        for key, label, fmt in ROWS:
            rv = fmt.format(r[key]) if r else "-"
            print(f"{'w' + str(c) if key == 'sites' else '':<8}{label:<34}{rv:>9}{fmt.format(s[key]):>11}")
    if args.composite:
        prefixes = sorted(args.synthetic.glob("train/*/Plate1/*_s1_w1.png"))[::97][:8]
        image = composite([Path(str(p)[: -len("_w1.png")]) for p in prefixes])
        Image.fromarray(image).resize((image.shape[1] * 3, image.shape[0] * 3), Image.NEAREST).save(args.composite)
        print(f"wrote {args.composite}")


if __name__ == "__main__":
    main()
