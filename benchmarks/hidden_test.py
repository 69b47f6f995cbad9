"""Score the test predictions of a synthetic run against the generator's hidden test labels.

    .venv/bin/python benchmarks/hidden_test.py [--env rxrx1_shaped]

Prints the test well accuracy after each stage (raw argmax, masked to the plate group, balanced
assignment) per cell line and overall, how many test layouts were inferred right, and the submission's
accuracy (the assignment with copied experiments answered from their map).
Only synthetic data sets have a hidden truth (`synthetic_truth` in the catalog).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def score(predictions: pd.DataFrame, truth: pd.DataFrame, plate_groups: pd.DataFrame,
          sirna_groups: pd.DataFrame) -> pd.DataFrame:
    """The postprocess ``evaluate`` table of ``predictions`` against the hidden ``truth``: accuracy per stage
    per experiment, cell line and overall, and whether each experiment's inferred layout is right."""
    from rxrx1_pipeline.pipelines.postprocess.nodes import evaluate

    if not predictions["id_code"].isin(truth["id_code"]).all():
        raise SystemExit("predictions hold wells the hidden truth lacks: is this the synthetic data set's run?")
    treated = truth[truth["well_type"] == "treatment"].drop(columns="group")
    actual = (treated.merge(sirna_groups, on="sirna")  # in the group numbers discovered from train
              .groupby(["experiment", "plate"], as_index=False)["group"].first())
    quiet = logging.getLogger("rxrx1_pipeline.pipelines.postprocess.nodes")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # evaluate logs its table as "Validation accuracy"
    try:
        return evaluate(predictions, plate_groups, truth, actual)
    finally:
        quiet.setLevel(level)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None, help="Kedro environment, e.g. rxrx1_shaped")
    args = parser.parse_args()
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=args.env) as session:
        catalog = session.load_context().catalog
        truth = catalog.load("synthetic_truth")
        table = score(catalog.load("test_predictions"), truth, catalog.load("test_plate_groups"),
                      catalog.load("sirna_groups"))
        submission = catalog.load("submission").merge(truth[["id_code", "sirna"]], on="id_code", suffixes=("", "_true"))
        copied = catalog.load("copied_experiments")
    from rxrx1_pipeline.pipelines.postprocess.nodes import format_stage_table

    print("Hidden test accuracy (raw argmax / masked to plate group / balanced assignment):")
    print(format_stage_table(table))
    found = copied[copied["copied"].astype(bool)]
    print(f"Submission (the assignment, copied experiments answered from their map: "
          f"{', '.join(f'{e} <- {s}' for e, s in zip(found['experiment'], found['source'])) or 'none'}): "
          f"{(submission['sirna'] == submission['sirna_true']).mean():.1%} of {len(submission)} test wells")


if __name__ == "__main__":
    main()
