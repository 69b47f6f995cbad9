"""One cell line's training on 1 process and on N DDP processes, from the outputs of a finished run.

    .venv/bin/python benchmarks/distributed.py [--env rxrx1_shaped] [--cell-line HEPG2] [--processes 1 2]
                                               [--epochs 10]

Reads the cell line's sites, image store and plate statistics from the catalog (run the `train`
pipeline once first), trains from scratch with each number of processes at the same global batch and
seed (checkpoints in a temporary folder, the run's own are not touched), and prints the loss and
valid site accuracy per epoch and the wall time of each. On a GPU machine each process takes one GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None)
    parser.add_argument("--cell-line", default="HEPG2")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the configured epochs")
    args = parser.parse_args()
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from rxrx1_pipeline.pipelines.train.nodes import train_model
    from rxrx1_pipeline.schema import Training
    from rxrx1_pipeline.storage.checkpoints import CheckpointStore

    bootstrap_project(ROOT)
    cl = args.cell_line
    with KedroSession.create(project_path=ROOT, env=args.env) as session:
        catalog = session.load_context().catalog
        inputs = [catalog.load(name) for name in (f"{cl}.model_sites", f"{cl}.site_images", f"{cl}.plate_stats",
                                                  "classes")]
        training = catalog.load(f"params:{cl}.training")  # the Training block Kedro built
    if args.epochs:
        training = Training.model_validate({**training.model_dump(), "epochs": args.epochs})
    curves, times = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.processes:
            settings = Training.model_validate({**training.model_dump(), "distributed": {
                **training.distributed.model_dump(), "nproc_per_node": n}})
            start = time.perf_counter()
            _, history, _ = train_model(*inputs, CheckpointStore(Path(tmp) / f"{n}.pt"), cl, settings)
            times[n] = time.perf_counter() - start
            curves[f"{n} process{'es' if n > 1 else ''}"] = history.set_index("epoch")[
                ["loss", "valid_site_accuracy"]]
    print(f"\n{cl}: global batch {training.batch_size}, {training.epochs} epochs, seed {training.seed}")
    print(pd.concat(curves, axis=1).round(4).to_string())
    for n, seconds in times.items():
        print(f"{n} process(es): {seconds:.1f} s wall")


if __name__ == "__main__":
    main()
