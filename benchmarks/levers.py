"""One row of the accuracy-lever table: run the pipelines with a setting, then score on the preset.

    .venv/bin/python benchmarks/levers.py NAME [--env rxrx1_shaped] [--pipelines full] [--params K=V,...]

Runs `kedro run --env ENV --pipelines PIPELINES --params PARAMS` (timed), then prints one markdown
row: valid raw / masked / assigned accuracy (the run's own stage table), hidden-test accuracy after
assignment (the submission against the generator's hidden labels) and the wall time. The rows of
benchmarks/levers.md were made with it; see there for each row's command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--env", default="rxrx1_shaped")
    parser.add_argument("--pipelines", default="full")
    parser.add_argument("--params", default=None)
    args = parser.parse_args()
    command = [str(Path(sys.executable).with_name("kedro")), "run", f"--env={args.env}",
               f"--pipelines={args.pipelines}"] + ([f"--params={args.params}"] if args.params else [])
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    wall = time.perf_counter() - start

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from hidden_test import score

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=args.env) as session:
        catalog = session.load_context().catalog
        valid = catalog.load("postprocess_metrics").set_index("name").loc["all"]
        hidden = score(catalog.load("test_predictions"), catalog.load("synthetic_truth"),
                       catalog.load("test_plate_groups"), catalog.load("sirna_groups")).set_index("name").loc["all"]
    print(f"| {args.name} | {valid['raw']:.1%} | {valid['masked']:.1%} | {valid['assigned']:.1%} | "
          f"{hidden['assigned']:.1%} | {wall / 60:.1f} min | `{' '.join(command[1:])}` |")


if __name__ == "__main__":
    main()
