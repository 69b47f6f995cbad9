"""The postprocess pipeline in process (SequentialRunner on a DataCatalog) on simulated cached logits."""

import logging

import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from rxrx1_pipeline.pipelines.plate_groups.nodes import (
    assign_train_plate_groups,
    discover_sirna_groups,
    tabulate_plate_layouts,
)
from rxrx1_pipeline.pipelines.postprocess import create_pipeline
from tests.builders import make_wells, simulated_logits
from rxrx1_pipeline.schema import Postprocess

PARAMS = {"rotation": {"min_confidence": 0.99},
          "assignment": {"cost": "prob", "temperature": "auto", "temperature_bounds": [0.02, 50.0],
                         "sinkhorn_iterations": 10},
          "copies": {"detect": True, "max_p_value": 1e-6}}


NO_LABELS = pd.DataFrame({"id_code": pd.Series(dtype=str), "sirna": pd.Series(dtype="Int64")})


class Kept(MemoryDataset):
    """An in-memory output the runner may not release, so the test can read intermediates."""

    def _release(self) -> None:
        pass


def run_postprocess(inputs: dict) -> dict:
    """Outputs of the postprocess pipeline run in process on ``inputs`` (every dataset kept)."""
    catalog = DataCatalog()
    for name, value in inputs.items():
        catalog[name] = value
    for block, values in PARAMS.items():  # built from the YAML values as Kedro builds a node's typed argument
        catalog[f"params:postprocess.{block}"] = Postprocess.model_fields[block].annotation.model_validate(values)
    pipe = create_pipeline()
    for name in pipe.outputs() | {ds for n in pipe.nodes for ds in n.outputs}:
        catalog[name] = Kept()
    SequentialRunner().run(pipe, catalog)
    return {name: catalog.load(name) for name in pipe.datasets() if not name.startswith("params:")}


def small_case() -> tuple[dict, pd.DataFrame, pd.Series]:
    """(postprocess inputs, wells, true siRNA per id_code) of a small plate structure with simulated logits."""
    wells, _, truth = make_wells(per_group=10, missing=("HUVEC-03_4_B07",), seed=5)
    groups = discover_sirna_groups(wells)
    train_pg = assign_train_plate_groups(wells, groups)
    valid = wells[wells["experiment"].isin(["HEPG2-01", "HUVEC-01"])]
    inputs = {"wells": wells, "sirna_groups": groups, "train_plate_groups": train_pg,
              "plate_layouts": tabulate_plate_layouts(train_pg),
              "valid_logits": simulated_logits(valid, truth, "train", strength=2.5, seed=1),
              "test_logits": simulated_logits(wells, truth, "test", strength=2.5, seed=2),
              "valid_logit_members": {}, "test_logit_members": {}, "test_labels": NO_LABELS}
    return inputs, wells, truth


def test_postprocess_reruns_from_cached_logits(caplog):
    inputs, wells, truth = small_case()
    with caplog.at_level(logging.INFO):
        first = run_postprocess(inputs)
    assert "Validation accuracy" in caplog.text and "Assignment temperature fitted" in caplog.text
    again = run_postprocess(inputs)

    test_ids = wells.loc[(wells["split"] == "test") & (wells["well_type"] == "treatment"), "id_code"]
    sub = first["submission"]
    assert sub.columns.tolist() == ["id_code", "sirna"]
    assert sorted(sub["id_code"]) == sorted(test_ids) and sub["id_code"].is_unique
    pd.testing.assert_frame_equal(again["submission"], sub)
    assert (sub.set_index("id_code")["sirna"] == truth[sub["id_code"]].to_numpy()).mean() > 0.9
    metrics = first["postprocess_metrics"]
    assert metrics.loc[metrics["level"] == "overall", "layout_correct"].item() == 1.0
    assert set(first["test_plate_groups"]["experiment"]) == set(wells.loc[wells["split"] == "test", "experiment"])
    assert "assigned" in first["postprocess_chart"].to_json()


def test_an_ensemble_of_weak_models_beats_one():
    """Members' cached logits are summed before layout inference: three weak models beat one."""
    inputs, wells, truth = small_case()
    valid = wells[wells["experiment"].isin(["HEPG2-01", "HUVEC-01"])]
    weak = {"valid_logits": simulated_logits(valid, truth, "train", strength=0.6, seed=11),
            "test_logits": simulated_logits(wells, truth, "test", strength=0.6, seed=12)}
    members = {split: {f"m{k}": simulated_logits(valid if split == "valid" else wells, truth,
                                                 "train" if split == "valid" else "test", strength=0.6, seed=seed0 + k)
                       for k in (0, 1)}
               for split, seed0 in (("valid", 21), ("test", 31))}
    alone = run_postprocess({**inputs, **weak})
    together = run_postprocess({**inputs, **weak, "valid_logit_members": members["valid"],
                                "test_logit_members": members["test"]})

    def accuracy(outputs):
        sub = outputs["submission"]
        return (sub.set_index("id_code")["sirna"] == truth[sub["id_code"]].to_numpy()).mean()

    assert accuracy(together) > accuracy(alone) + 0.05
    pd.testing.assert_frame_equal(together["valid_ensemble_logits"].iloc[:, 1:],
                                  (weak["valid_logits"].set_index("id_code")
                                   + sum(m.set_index("id_code") for m in members["valid"].values()))
                                  .loc[together["valid_ensemble_logits"]["id_code"]].reset_index(drop=True),
                                  check_dtype=False, atol=1e-4)


def released_labels(wells: pd.DataFrame, truth: pd.Series) -> pd.DataFrame:
    """The test treatment wells' true siRNAs, as the rxrx.ai release carries them."""
    test = wells.loc[(wells["split"] == "test") & (wells["well_type"] == "treatment"), "id_code"]
    return pd.DataFrame({"id_code": test.to_numpy(), "sirna": truth[test].astype("Int64").to_numpy()})


def test_released_test_labels_score_the_run_and_steer_nothing():
    """With test labels the run reports the test accuracy per stage; shuffled labels change its figures and
    nothing else: no prediction, layout, copy or submission reads them."""
    inputs, wells, truth = small_case()
    without = run_postprocess(inputs)
    assert without["test_metrics"].empty
    labels = released_labels(wells, truth)
    scored = run_postprocess({**inputs, "test_labels": labels})
    overall = scored["test_metrics"].set_index("name").loc["all"]
    submission = scored["submission"].set_index("id_code")["sirna"]
    assert overall["assigned"] == (submission == truth[submission.index].to_numpy()).mean() == overall["submission"]
    assert overall["layout_correct"] == 1.0 and overall["raw"] < overall["masked"] <= overall["assigned"]
    shuffled = run_postprocess({**inputs, "test_labels": labels.assign(sirna=labels["sirna"].sample(frac=1,
                                                                                                   random_state=0).to_numpy())})
    assert shuffled["test_metrics"].set_index("name").loc["all", "assigned"] < overall["assigned"]
    for name in ("test_predictions", "test_plate_groups", "copied_experiments", "submission", "postprocess_metrics"):
        pd.testing.assert_frame_equal(shuffled[name], without[name])
        pd.testing.assert_frame_equal(scored[name], without[name])


def test_in_the_full_pipeline_only_the_test_scoring_and_the_report_depend_on_the_test_labels():
    from rxrx1_pipeline.pipeline_registry import register_pipelines

    full = Pipeline(register_pipelines()["full"].nodes)
    assert [n.name for n in full.nodes if "test_labels" in n.inputs] == ["postprocess.evaluate_test"]
    assert {n.name for n in full.from_inputs("test_labels").nodes} == {"postprocess.evaluate_test",
                                                                      "report.build_report"}
