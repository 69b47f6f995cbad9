"""Score the test predictions of a synthetic run against the generator's hidden test labels.

    .venv/bin/python benchmarks/hidden_test.py [--env rxrx1_shaped]

Prints the test well accuracy after each stage (raw argmax, masked to the plate group, balanced
assignment = the submission) per cell line and overall, and how many test layouts were inferred right.
Only synthetic data sets have a hidden truth (`synthetic_truth` in the catalog).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"raw": "sirna_argmax", "masked": "sirna_masked", "assigned": "sirna_assigned"}


def score(predictions: pd.DataFrame, truth: pd.DataFrame, plate_groups: pd.DataFrame,
          sirna_groups: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per stage and cell line (and overall) of ``predictions`` against ``truth``; layouts right."""
    from rxrx1_pipeline.plates import layout_long

    df = predictions.merge(truth[["id_code", "cell_line", "sirna"]], on="id_code", how="left", validate="1:1")
    if df["sirna"].isna().any():
        raise SystemExit("predictions hold wells the hidden truth lacks: is this the synthetic data set's run?")
    hits = pd.DataFrame({stage: df[column] == df["sirna"] for stage, column in STAGES.items()})
    hits["cell_line"] = df["cell_line"]
    table = hits.groupby("cell_line").agg(wells=("raw", "size"), **{s: (s, "mean") for s in STAGES})
    table.loc["all"] = [len(hits), *(hits[s].mean() for s in STAGES)]
    inferred = layout_long(plate_groups, "inferred")
    treated = truth[truth["well_type"] == "treatment"].drop(columns="group")
    actual = (treated.merge(sirna_groups, on="sirna")  # the group numbers discovered from train
              .groupby(["experiment", "plate"], as_index=False).agg(group=("group", "first"),
                                                                   cell_line=("cell_line", "first")))
    both = inferred.merge(actual, on=["experiment", "plate"])
    right = (both["inferred"] == both["group"]).groupby([both["cell_line"], both["experiment"]]).all()
    per_line = right.groupby(level=0).agg(["sum", "size"])
    table["layouts"] = [f"{int(per_line.loc[c, 'sum'])}/{int(per_line.loc[c, 'size'])}" for c in table.index[:-1]] + [
        f"{int(right.sum())}/{len(right)}"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None, help="Kedro environment, e.g. rxrx1_shaped")
    args = parser.parse_args()
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=args.env) as session:
        catalog = session.load_context().catalog
        table = score(catalog.load("test_predictions"), catalog.load("synthetic_truth"),
                      catalog.load("test_plate_groups"), catalog.load("sirna_groups"))
    print("Hidden test accuracy (raw argmax / masked to plate group / balanced assignment = submission):")
    print(f"{'':<8}{'wells':>7}  {'raw':>6} {'masked':>7} {'assigned':>8}  layouts ok")
    for name, r in table.iterrows():
        print(f"{name:<8}{int(r['wells']):>7}  {r['raw']:>6.1%} {r['masked']:>7.1%} {r['assigned']:>8.1%}  "
              f"{r['layouts']}")


if __name__ == "__main__":
    main()
