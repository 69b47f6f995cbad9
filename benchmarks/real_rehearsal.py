"""A rehearsal of the real job on this CPU: `kedro run --env=real`, stage by stage, on real RxRx1 PNGs, with
conf/real's own network and recipe (densenet161 at 512 px, 1,139 classes, MLP neck, one-hot cell line,
softmax + ArcFace, CutMix, zoom, intensity jitter, accumulation, pseudo-labels, 8-view TTA summed over sites,
post-processing). Only counts shrink, by ``--params``: epochs (1), batches per epoch, batch size, loader
processes; ``pretrained: none`` (offline). Prints each stage's wall time and peak memory (the stage's process).

The data root (in a temporary folder, with a copy of the project's conf; the checkout is not written) holds the
real CSV rows of:

- HUVEC-01, every well: its 1,108 siRNAs and 31 controls make the real 1,139 classes (fit sites of HUVEC);
- HEPG2-01, RPE-01, U2OS-01: the first treatment well of each plate (fit);
- HEPG2-02, HUVEC-02, RPE-02, U2OS-02: the first treatment well of plate 1 (held out: valid);
- test HEPG2-08, HUVEC-17, RPE-08, U2OS-04: the first well of plate 1 (test).

../shared/rxrx1/images holds only well B02 of some plates (site 1 complete, site 2 without w5 and w6), so each
site's six PNGs are links to the complete B02 site 1 of its plate (or of plate 1, or of its cell line's
experiment with images): real pixels, the real layout and labels, repeated images. What this measures is the
mechanics, time and memory of every stage, not accuracy.

    PYTHONPATH=src python benchmarks/real_rehearsal.py [--steps 2] [--batch 2] [--keep DIR] [--arch densenet161]

``--arch`` other than densenet161 is for a quick check of the script itself, not the rehearsal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
METADATA = SHARED / "rxrx1" / "metadata"
IMAGES = SHARED / "rxrx1" / "images"
LINES = ("HEPG2", "HUVEC", "RPE", "U2OS")
FULL = ("HUVEC-01",)
FIT = ("HEPG2-01", "RPE-01", "U2OS-01")
VALID = ("HEPG2-02", "HUVEC-02", "RPE-02", "U2OS-02")
TEST = ("HEPG2-08", "HUVEC-17", "RPE-08", "U2OS-04")
WITH_IMAGES = {"HEPG2": "HEPG2-01", "HUVEC": "HUVEC-01", "RPE": "RPE-01", "U2OS": "U2OS-01"}
STAGES = ("ingest", "plate_groups", "model_input", "train", "inference", "postprocess", "report")


def rows(table: pd.DataFrame, experiments, per_plate: int | None, plates=(1, 2, 3, 4)) -> pd.DataFrame:
    """The rows of ``experiments`` on ``plates``: every well (``per_plate`` None) or the first ``per_plate``."""
    mine = table[table["experiment"].isin(experiments) & table["plate"].isin(plates)].sort_values(
        ["experiment", "plate", "well"])
    return mine if per_plate is None else mine.groupby(["experiment", "plate"]).head(per_plate)


def build_root(root: Path) -> dict[str, int]:
    """The rehearsal's data root in the Kaggle layout; returns counts of what it holds."""
    train, test = pd.read_csv(METADATA / "train.csv"), pd.read_csv(METADATA / "test.csv")
    train_controls, test_controls = pd.read_csv(METADATA / "train_controls.csv"), pd.read_csv(METADATA / "test_controls.csv")
    tables = {
        "train.csv": pd.concat([rows(train, FULL, None), rows(train, FIT, 1), rows(train, VALID, 1, plates=(1,))]),
        "train_controls.csv": rows(train_controls, FULL, None),
        "test.csv": rows(test, TEST, 1, plates=(1,)),
        "test_controls.csv": test_controls.iloc[:0],
    }
    root.mkdir(parents=True)
    for name, table in tables.items():
        table.to_csv(root / name, index=False)
    links = 0
    for name, table in tables.items():
        split = "train" if name.startswith("train") else "test"
        for r in table.itertuples():
            source = real_site(split, r.experiment, r.plate)
            folder = root / split / r.experiment / f"Plate{r.plate}"
            folder.mkdir(parents=True, exist_ok=True)
            for site in (1, 2):
                for c in range(1, 7):
                    (folder / f"{r.well}_s{site}_w{c}.png").symlink_to(source.with_name(f"B02_s1_w{c}.png"))
                    links += 1
    wells = sum(len(t) for t in tables.values())
    return {"wells": wells, "sites": 2 * wells, "links": links,
            "classes": pd.concat([tables["train.csv"], tables["train_controls.csv"]])["sirna"].nunique()}


def real_site(split: str, experiment: str, plate: int) -> Path:
    """A complete real site (B02, site 1) for a well of (``experiment``, ``plate``): its plate's, else its plate
    1's, else that of the same plate of its cell line's experiment with images."""
    line = experiment.split("-")[0]
    for path in (IMAGES / split / experiment / f"Plate{plate}", IMAGES / split / experiment / "Plate1",
                 IMAGES / "train" / WITH_IMAGES[line] / f"Plate{plate}"):
        if all((path / f"B02_s1_w{c}.png").is_file() for c in range(1, 7)):
            return path / "B02_s1_w1.png"
    raise FileNotFoundError(f"no complete real site for {split}/{experiment}/Plate{plate} under {IMAGES}")


def params(data_root: Path, steps: int, batch: int, arch: str | None) -> str:
    """The --params of every stage: the data root, and counts (plus ``arch`` for a check of the script)."""
    shared = {"pretrained": "none", "epochs": 1, "steps_per_epoch": steps, "batch_size": batch, "num_workers": 0,
              "validate_every": 0, "pseudo_labels.start_epoch": 1}
    line = {"pretrained": "none", "num_workers": 0, "batch_size": batch}
    if arch:
        shared["arch"] = line["arch"] = arch
    values = {"data_root": str(data_root), "inference.num_workers": 0, "inference.batch_size": 8,
              **{f"shared_training.{k}": v for k, v in shared.items()},
              **{f"{cell}.training.{k}": v for cell in LINES for k, v in line.items()}}
    return ",".join(f"{k}={v}" for k, v in values.items())


def run_stage(project: Path, stage: str, params_: str, log: Path) -> tuple[float, float, int]:
    """`kedro run --env=real --pipelines=full --namespaces=STAGE` in its own process: (seconds, peak RSS GiB,
    return code)."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
           "PYTHONPATH": str(ROOT / "src")}
    command = [str(Path(sys.executable).with_name("kedro")), "run", "--env=real", "--pipelines=full",
               f"--namespaces={stage}", f"--params={params_}"]
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 2**20, process.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="batches of the one training epoch (default 2)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2; accumulation 2 as conf/real)")
    parser.add_argument("--arch", default=None, help="another backbone than conf/real's: a check of the script only")
    parser.add_argument("--keep", type=Path, default=None, help="work in this new folder and keep it")
    args = parser.parse_args()
    if not (METADATA / "train.csv").is_file() or not IMAGES.is_dir():
        print(f"needs the real metadata and images under {SHARED / 'rxrx1'}", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="real_rehearsal_"))
    try:
        counts = build_root(work / "rxrx1")
        project = work / "project"
        shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(
            "data", ".git", ".venv", "mlruns", "mlflow.db", "__pycache__", "*.egg-info", "build", "notebooks"))
        print(f"data root {work / 'rxrx1'}: {counts['wells']} wells, {counts['sites']} sites, "
              f"{counts['classes']} labelled classes; {counts['links']} links to real PNGs", flush=True)
        settings = params(work / "rxrx1", args.steps, args.batch, args.arch)
        print(f"kedro run --env=real --pipelines=full --namespaces=STAGE --params={settings}\n", flush=True)
        table = []
        for stage in STAGES:
            seconds, peak, code = run_stage(project, stage, settings, work / f"{stage}.log")
            table.append((stage, seconds, peak, code))
            print(f"{stage}: {seconds:.0f} s, peak {peak:.2f} GiB, exit {code}", flush=True)
            if code:
                print((work / f"{stage}.log").read_text()[-6000:], file=sys.stderr)
                break
        print("\n| stage | wall time (s) | peak memory (GiB) |\n|---|---|---|")
        for stage, seconds, peak, code in table:
            print(f"| {stage} | {seconds:.0f} | {peak:.2f} |" + ("" if not code else f" failed (exit {code}) |"))
        print(f"| all | {sum(t[1] for t in table):.0f} | {max(t[2] for t in table):.2f} |")
        return max(t[3] for t in table)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
