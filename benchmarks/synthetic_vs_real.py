"""Per-channel pixel statistics of the synthetic images next to the real RxRx1 PNGs.

    .venv/bin/python benchmarks/synthetic_vs_real.py [--real ../shared/rxrx1/images] [--synthetic data/01_raw/synthetic]
        [--composite composite.png]

Real: the negative-control PNGs in --real (skipped with a message when absent). Synthetic: site 1 of
every well of plate 1 of each train experiment. Optionally writes an RGB composite of a few synthetic
sites (w1+w4 red, w2+w6 green, w3+w5 blue) to look at.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def stats(files: list[Path]) -> str:
    pixels = np.concatenate([np.asarray(Image.open(f)).ravel() for f in files]).astype(np.float64)
    p50, p99 = np.percentile(pixels, [50, 99])
    return f"{len(files):5d} files  mean {pixels.mean():6.1f}  std {pixels.std():6.1f}  p50 {p50:4.0f}  p99 {p99:4.0f}"


def composite(prefixes: list[Path]) -> np.ndarray:
    tiles = []
    for prefix in prefixes:
        ch = [np.asarray(Image.open(f"{prefix}_w{c}.png")).astype(np.float64) for c in range(1, 7)]
        rgb = np.stack([ch[0] + ch[3], ch[1] + ch[5], ch[2] + ch[4]], axis=-1)
        tiles.append(np.clip(rgb / max(np.percentile(rgb, 99.5), 1) * 255, 0, 255).astype(np.uint8))
    return np.concatenate(tiles, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, default=ROOT.parent / "shared/rxrx1/images")
    parser.add_argument("--synthetic", type=Path, default=ROOT / "data/01_raw/synthetic")
    parser.add_argument("--composite", type=Path)
    args = parser.parse_args()
    if not args.real.is_dir():
        print(f"real images not found in {args.real}: showing the synthetic statistics only")
    for c in range(1, 7):
        real = sorted(args.real.glob(f"*/*/Plate*/*_w{c}.png")) if args.real.is_dir() else []
        synthetic = sorted(args.synthetic.glob(f"train/*/Plate1/*_s1_w{c}.png"))
        print(f"w{c}  real: {stats(real) if real else '-':<62} synthetic: {stats(synthetic)}")
    if args.composite:
        prefixes = sorted(args.synthetic.glob("train/*/Plate1/*_s1_w1.png"))[::97][:8]
        image = composite([Path(str(p)[: -len("_w1.png")]) for p in prefixes])
        Image.fromarray(image).resize((image.shape[1] * 3, image.shape[0] * 3), Image.NEAREST).save(args.composite)
        print(f"wrote {args.composite}")


if __name__ == "__main__":
    main()
