"""Post-processing nodes around the leak's solver (``leak.assignment``, ``leak.copies``): ensemble logits, the
submission, the validation stage table and its chart, and the test one where the test labels are released."""

import logging
from typing import Any

import numpy as np
import pandas as pd

from rxrx1_pipeline.leak.copies import answer_from_copies
from rxrx1_pipeline.leak.kernels import LogitsError
from rxrx1_pipeline.leak.plates import layout_long

log = logging.getLogger(__name__)


def ensemble_logits(logits: pd.DataFrame, members: dict[str, pd.DataFrame], split: str = "") -> pd.DataFrame:
    """This run's cached logits plus every ensemble member's (other models' logits for the same wells and
    siRNAs), summed before layout inference; with no member, the run's own logits."""
    if not members:
        return logits
    total = logits.set_index("id_code").astype(np.float64)
    where = f"07_model_output/ensemble/{split}/" if split else "the ensemble folder"
    for name, member in members.items():
        other = member.set_index("id_code")
        if set(other.index) != set(total.index) or list(other.columns) != list(total.columns):
            raise LogitsError(f"ensemble member {name} ({where}{name}.parquet): its wells or siRNA columns differ "
                              f"from this run's {split + ' ' if split else ''}logits ({len(other)} vs {len(total)} "
                              f"wells, {other.shape[1]} vs {total.shape[1]} columns)")
        total += other.loc[total.index].astype(np.float64)
    log.info("Ensemble: this run's %slogits summed with %d member(s): %s", split + " " if split else "",
             len(members), ", ".join(members))
    return total.astype(np.float32).reset_index()


def ensemble_splits(valid_logits: pd.DataFrame, test_logits: pd.DataFrame, valid_members: dict[str, pd.DataFrame],
                    test_members: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both splits' ensemble logits (:func:`ensemble_logits`). A member must be in both splits: its validation
    logits fit the temperature that its test logits are assigned with, so a member in one split only is refused."""
    for split, mine, other in (("valid", valid_members, test_members), ("test", test_members, valid_members)):
        alone = sorted(set(mine) - set(other))
        if alone:
            twin = "test" if split == "valid" else "valid"
            raise LogitsError(f"ensemble member {alone[0]} is in 07_model_output/ensemble/{split}/ but not in "
                              f"ensemble/{twin}/: every member needs both splits (the temperature is fitted on the "
                              f"valid logits the test logits are assigned with); copy that run's {twin}_logits.parquet "
                              f"to ensemble/{twin}/{alone[0]}.parquet, or remove the member")
    return ensemble_logits(valid_logits, valid_members, "valid"), ensemble_logits(test_logits, test_members, "test")


def build_submission(test_predictions: pd.DataFrame, copied_experiments: pd.DataFrame, wells: pd.DataFrame
                     ) -> pd.DataFrame:
    """Kaggle submission (id_code, sirna) with every test treatment well exactly once: the balanced assignment,
    and for the wells of copied experiments the siRNA of the map they copy (``leak.copies``)."""
    test = wells.loc[(wells["split"] == "test") & (wells["well_type"] == "treatment"), ["id_code"]]
    answers = test_predictions.assign(sirna_assigned=answer_from_copies(test_predictions, copied_experiments, wells))
    sub = test.merge(answers[["id_code", "sirna_assigned"]], on="id_code", how="left")
    missing = sub["sirna_assigned"].isna()
    if missing.any() or len(test_predictions) != len(test):
        examples = sub.loc[missing, "id_code"].head(3).tolist()
        raise LogitsError(f"test predictions cover {len(test_predictions)} wells, {int(missing.sum())} of the "
                          f"{len(test)} test treatment wells missing (e.g. {examples})")
    log.info("Submission: %d test wells, %d siRNAs predicted", len(sub), sub["sirna_assigned"].nunique())
    return sub.rename(columns={"sirna_assigned": "sirna"}).astype({"sirna": "int64"})


STAGES = ("raw", "masked", "assigned")


def evaluate(valid_predictions: pd.DataFrame, valid_plate_groups: pd.DataFrame, wells: pd.DataFrame,
             train_plate_groups: pd.DataFrame) -> pd.DataFrame:
    """Validation accuracy after each stage per experiment, per cell line and overall (:func:`stage_table`)."""
    table = stage_table(valid_predictions, valid_plate_groups, wells, train_plate_groups)
    log.info("Validation accuracy (raw argmax / masked to plate group / balanced assignment):\n%s",
             format_stage_table(table))
    return table


def evaluate_test(test_predictions: pd.DataFrame, test_plate_groups: pd.DataFrame, submission: pd.DataFrame,
                  test_labels: pd.DataFrame, wells: pd.DataFrame, sirna_groups: pd.DataFrame) -> pd.DataFrame:
    """The test accuracy per stage from the released test labels (:func:`stage_table`; the rxrx.ai release has
    them), with the submission's (``submission``: the assignment, copied experiments answered from their map)
    on each row; empty without labels. Nothing else reads the labels: they score, never steer."""
    if test_labels.empty:
        return pd.DataFrame(columns=["level", "name", "experiments", "wells", *STAGES, "layout_correct",
                                     "submission"])
    labelled = wells.drop(columns="sirna").merge(test_labels, on="id_code", how="inner")
    actual = (labelled.merge(sirna_groups, on="sirna")  # each test plate's group, in the groups found in train
              .groupby(["experiment", "plate"], as_index=False)["group"].first())
    predictions = test_predictions[test_predictions["id_code"].isin(labelled["id_code"])]
    table = stage_table(predictions, test_plate_groups, labelled, actual)
    right = submission.merge(labelled[["id_code", "experiment", "cell_line", "sirna"]], on="id_code",
                             suffixes=("", "_true"))
    right["hit"] = right["sirna"] == right["sirna_true"]
    by = {"experiment": right.groupby("experiment")["hit"].mean(),
          "cell_line": right.groupby("cell_line")["hit"].mean(),
          "overall": pd.Series({"all": right["hit"].mean()})}
    table["submission"] = [float(by[level].get(name, np.nan)) for level, name in zip(table["level"], table["name"])]
    log.info("Test accuracy from the released labels (raw / masked / assigned; the submission with copied "
             "experiments answered):\n%s", format_stage_table(table))
    return table


def stage_table(predictions: pd.DataFrame, plate_groups: pd.DataFrame, wells: pd.DataFrame,
                actual_plate_groups: pd.DataFrame) -> pd.DataFrame:
    """Accuracy after each stage per experiment, per cell line and overall, against ``wells``' siRNAs.

    Columns: level (experiment/cell_line/overall), name, experiments, wells, raw, masked, assigned
    (fractions), layout_correct (share of experiments whose inferred layout matches ``actual_plate_groups``).
    """
    df = predictions.merge(wells[["id_code", "cell_line", "sirna"]], on="id_code", how="left")
    truth = df["sirna"].astype("Int64").to_numpy(dtype=np.int64, na_value=-1)
    hits = pd.DataFrame({"experiment": df["experiment"], "cell_line": df["cell_line"],
                         **{s: df[f"sirna_{'argmax' if s == 'raw' else s}"].to_numpy() == truth
                            for s in STAGES}})
    inferred = layout_long(plate_groups, "inferred")
    cmp = inferred.merge(actual_plate_groups, on=["experiment", "plate"], how="inner")
    correct = (cmp["inferred"] == cmp["group"]).groupby(cmp["experiment"]).all()
    per_exp = hits.groupby("experiment").agg(cell_line=("cell_line", "first"), wells=("raw", "size"),
                                             **{s: (s, "mean") for s in STAGES})
    per_exp["layout_correct"] = correct.reindex(per_exp.index).astype(float)
    per_exp["experiments"] = 1

    def roll_up(level: str, name: str, mask: pd.Series) -> dict[str, Any]:
        sub, e = hits[mask.to_numpy()], per_exp[per_exp.index.isin(hits.loc[mask.to_numpy(), "experiment"])]
        return {"level": level, "name": name, "experiments": len(e), "wells": len(sub),
                **{s: float(sub[s].mean()) for s in STAGES}, "layout_correct": float(e["layout_correct"].mean())}

    table = pd.DataFrame(
        [roll_up("cell_line", c, hits["cell_line"] == c) for c in sorted(hits["cell_line"].unique())]
        + [roll_up("overall", "all", pd.Series(True, index=hits.index))]
        + [{"level": "experiment", "name": e, **r} for e, r in
           per_exp.drop(columns="cell_line").to_dict("index").items()])
    return table[["level", "name", "experiments", "wells", *STAGES, "layout_correct"]]


def format_stage_table(metrics: pd.DataFrame) -> str:
    """The per-cell-line and overall rows of ``evaluate``'s table as fixed-width text."""
    submission = "submission" in metrics
    lines = [f"{'':<10}{'wells':>7}  {'raw':>6} {'masked':>7} {'assigned':>8}  layout ok"
             + ("  submission" if submission else "")]
    for _, r in metrics[metrics["level"] != "experiment"].iterrows():
        lines.append(f"{r['name']:<10}{r['wells']:>7}  {r['raw']:>6.1%} {r['masked']:>7.1%} {r['assigned']:>8.1%}"
                     f"  {round(r['layout_correct'] * r['experiments'])}/{r['experiments']}"
                     + (f"  {r['submission']:>10.1%}" if submission else ""))
    return "\n".join(lines)


def plot_stage_accuracy(postprocess_metrics: pd.DataFrame):
    """Validation accuracy per cell line after each stage, as grouped bars (shown by ``kedro viz``)."""
    import plotly.graph_objects as go

    rows = postprocess_metrics[postprocess_metrics["level"] != "experiment"]
    fig = go.Figure([go.Bar(name=stage, x=rows["name"], y=rows[stage], text=rows[stage].map("{:.1%}".format))
                     for stage in STAGES])
    fig.update_layout(barmode="group", title="Validation well accuracy: raw argmax, masked, assigned",
                      yaxis={"tickformat": ".0%", "range": [0, 1]}, template="plotly_white")
    return fig
