"""Layout inference, masking, assignment and reporting on small cases with known answers."""

import logging

import numpy as np
import pandas as pd
import pytest

from rxrx1_pipeline.leak.kernels import (
    LogitsError,
    assign_plate,
    row_argmax,
)
from rxrx1_pipeline.pipelines.plate_groups.nodes import (
    assign_train_plate_groups,
    discover_sirna_groups,
    tabulate_plate_layouts,
)
from rxrx1_pipeline.leak.assignment import assign_wells, fit_temperature, infer_layouts, split_logits
from rxrx1_pipeline.pipelines.postprocess.nodes import build_submission, ensemble_logits, ensemble_splits, evaluate
from rxrx1_pipeline.leak.copies import COLUMNS as COPY_COLUMNS
from rxrx1_pipeline.leak.plates import layout_matrix
from tests.builders import make_wells, simulated_logits
from rxrx1_pipeline.schema import Assignment, Rotation

ROTATION = Rotation(min_confidence=0.99)
ASSIGN = Assignment(cost="prob", temperature="auto", temperature_bounds=[0.02, 50.0], sinkhorn_iterations=10)

NO_COPIES = pd.DataFrame(columns=COPY_COLUMNS)


@pytest.fixture(scope="module")
def case():
    """Train uses two layouts; the test experiments use the other two; some wells missing."""
    wells, members, truth = make_wells(per_group=12, missing=("HEPG2-04_2_B05", "HEPG2-04_2_B06", "HEPG2-01_3_B04"))
    groups = discover_sirna_groups(wells)
    train_pg = assign_train_plate_groups(wells, groups)
    layouts = tabulate_plate_layouts(train_pg)
    return {"wells": wells, "truth": truth, "groups": groups, "train_pg": train_pg, "layouts": layouts}


def true_groups(case, split: str) -> pd.DataFrame:
    """Group per (experiment, plate) of a split, from the true siRNAs."""
    w = case["wells"]
    treat = w[(w["split"] == split) & (w["well_type"] == "treatment")]
    g = case["groups"].set_index("sirna")["group"].loc[case["truth"][treat["id_code"]].to_numpy()].to_numpy()
    return treat.assign(group=g).groupby(["experiment", "plate"])["group"].first().reset_index()


def test_rotation_inference_finds_layouts_absent_from_train(case):
    logits = simulated_logits(case["wells"], case["truth"], "test", strength=2.0)
    out = infer_layouts(logits, case["wells"], case["groups"], case["layouts"], ROTATION)
    assert out["experiment"].tolist() == ["HEPG2-04", "HUVEC-03"]
    in_train = case["layouts"].set_index("layout")["in_train"]
    assert not in_train[out["layout"]].any()
    inferred = out.melt(id_vars="experiment", value_vars=[f"plate_{p}" for p in range(1, 5)],
                        var_name="plate", value_name="group")
    inferred["plate"] = inferred["plate"].str[-1].astype(int)
    expected = true_groups(case, "test")
    assert inferred.merge(expected, on=["experiment", "plate"])["group_x"].eq(
        inferred.merge(expected, on=["experiment", "plate"])["group_y"]).all()
    post = out[[c for c in out.columns if c.startswith("posterior_")]]
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    assert (out["confidence"] > 0.99).all() and (out["margin"] > 0).all()
    assert out["wells"].tolist() == [4 * 12 - 2, 4 * 12]


def test_indecisive_layout_is_a_warning_naming_the_experiment(case, caplog):
    logits = simulated_logits(case["wells"], case["truth"], "test", strength=2.0)
    logits.loc[logits["id_code"].str.startswith("HUVEC-03"), logits.columns[1:]] = 0.0
    with caplog.at_level(logging.WARNING):
        out = infer_layouts(logits, case["wells"], case["groups"], case["layouts"], ROTATION)
    assert out.set_index("experiment").loc["HUVEC-03", "confidence"] == pytest.approx(0.25)
    assert "Layout of HUVEC-03 is not decisive" in caplog.text
    assert "HEPG2-04" not in caplog.text


def test_assign_plate_resolves_a_duplicate():
    # wells 0 and 1 both prefer siRNA column 0; well 1 prefers it more, so well 0 takes column 1
    block = np.array([[5.0, 4.0, 0.0], [5.5, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=np.float32)
    for cost in ("prob", "log_prob"):
        for iterations in (0, 10):
            chosen, score = assign_plate(block, 1.0, cost, iterations)
            assert chosen.tolist() == [1, 0, 2]
            assert 0 < score.min() and score.max() <= 1
    partial, _ = assign_plate(block[:2], 1.0, "prob", 10)  # a plate with a missing well
    assert partial.tolist() == [1, 0]
    with pytest.raises(ValueError, match="unknown assignment cost"):
        assign_plate(block, 1.0, "rank", 0)


def _one_plate_case():
    """One test experiment; plate 1 holds group 0 (siRNAs 0-2), plate 2 group 1 (3-5); 3 wells
    on plate 1, 2 on plate 2 (a missing well)."""
    ids = ["E-01_1_B03", "E-01_1_B04", "E-01_1_B05", "E-01_2_B03", "E-01_2_B04"]
    wells = pd.DataFrame({"id_code": ids, "experiment": "E-01", "cell_line": "E", "plate": [1, 1, 1, 2, 2],
                          "well": [i[-3:] for i in ids], "split": "test", "well_type": "treatment",
                          "sirna": pd.array([pd.NA] * 5, dtype="Int64")})
    groups = pd.DataFrame({"sirna": range(6), "group": [0, 0, 0, 1, 1, 1]})
    plate_groups = pd.DataFrame({"experiment": ["E-01"], "layout": [0], "plate_1": [0], "plate_2": [1]})
    x = np.array([[5.0, 4.0, 0.0, 9.0, 0.0, 0.0],   # raw argmax 3 (wrong group) -> masked 0 -> assigned 1
                  [5.5, 0.0, 0.0, 0.0, 0.0, 0.0],   # 0
                  [0.0, 0.0, 3.0, 0.0, 0.0, 0.0],   # 2
                  [0.0, 0.0, 0.0, 0.0, 2.0, 1.0],   # 4
                  [0.0, 0.0, 0.0, 0.0, 3.0, 0.0]],  # 4 wanted twice -> 5 for the weaker claim
                 dtype=np.float32)
    logits = pd.DataFrame(x, columns=[str(i) for i in range(6)])
    logits.insert(0, "id_code", ids)
    return wells, groups, plate_groups, logits


def test_masking_and_assignment_known_answer():
    wells, groups, plate_groups, logits = _one_plate_case()
    out = assign_wells(logits, wells, groups, plate_groups, {"temperature": 1.0}, ASSIGN)
    assert out["id_code"].tolist() == logits["id_code"].tolist()
    assert out["sirna_argmax"].tolist() == [3, 0, 2, 4, 4]
    assert out["sirna_masked"].tolist() == [0, 0, 2, 4, 4]
    assert out["sirna_assigned"].tolist() == [1, 0, 2, 5, 4]
    sub = build_submission(out, NO_COPIES, wells)
    assert sub.columns.tolist() == ["id_code", "sirna"] and sub["sirna"].tolist() == [1, 0, 2, 5, 4]


def test_too_many_wells_for_the_group_is_an_error():
    wells, groups, plate_groups, logits = _one_plate_case()
    groups = groups.assign(group=[0, 0, 1, 1, 1, 1])  # plate 1's group now has 2 siRNAs for 3 wells
    with pytest.raises(LogitsError, match="E-01 plate 1 has 3 treatment wells"):
        assign_wells(logits, wells, groups, plate_groups, {"temperature": 1.0}, ASSIGN)


def test_invariants_on_simulated_logits(case):
    wells, groups = case["wells"], case["groups"]
    logits = simulated_logits(wells, case["truth"], "test", strength=1.5, seed=3)
    pg = infer_layouts(logits, wells, groups, case["layouts"], ROTATION)
    out = assign_wells(logits, wells, groups, pg, {"temperature": 0.7}, ASSIGN)
    test_ids = wells.loc[(wells["split"] == "test") & (wells["well_type"] == "treatment"), "id_code"]
    assert sorted(out["id_code"]) == sorted(test_ids)
    assert not out.duplicated(["experiment", "plate", "sirna_assigned"]).any()
    group_of = groups.set_index("sirna")["group"]
    plates, matrix = layout_matrix(case["layouts"])
    plate_group = pg.set_index("experiment")[[f"plate_{p}" for p in plates]]
    expected = [plate_group.loc[e, f"plate_{p}"] for e, p in zip(out["experiment"], out["plate"])]
    assert (group_of.loc[out["sirna_assigned"]].to_numpy() == expected).all()
    assert (group_of.loc[out["sirna_masked"]].to_numpy() == expected).all()
    sub = build_submission(out, NO_COPIES, wells)
    assert sub["id_code"].is_unique and len(sub) == len(test_ids)
    with pytest.raises(LogitsError, match="1 of the .* test treatment wells missing"):
        build_submission(out.iloc[1:], NO_COPIES, wells)


def test_temperature_fit_recovers_the_simulated_sharpness(case):
    logits = simulated_logits(case["wells"], case["truth"], "train", strength=2.0, seed=1)
    fitted = fit_temperature(logits, case["wells"], case["groups"], ASSIGN)
    assert fitted["fitted"] and fitted["wells"] == len(logits)
    assert 0.35 < fitted["temperature"] < 0.7  # the Bayes posterior of this simulation is softmax(2 x)
    fixed = fit_temperature(logits, case["wells"], case["groups"], ASSIGN.model_copy(update={"temperature": 1.5}))
    assert fixed == {"temperature": 1.5, "fitted": False}


def test_evaluate_reports_each_stage(case, caplog):
    wells, groups = case["wells"], case["groups"]
    logits = simulated_logits(wells, case["truth"], "train", strength=3.0, seed=2)
    pg = infer_layouts(logits, wells, groups, case["layouts"], ROTATION)
    out = assign_wells(logits, wells, groups, pg, {"temperature": 0.5}, ASSIGN)
    with caplog.at_level(logging.INFO):
        table = evaluate(out, pg, wells, case["train_pg"])
    truth = case["truth"][out["id_code"]].to_numpy()
    overall = table[table["level"] == "overall"].iloc[0]
    assert overall["raw"] == pytest.approx((out["sirna_argmax"].to_numpy() == truth).mean())
    assert overall["assigned"] == pytest.approx((out["sirna_assigned"].to_numpy() == truth).mean())
    assert overall["wells"] == len(out) and overall["experiments"] == 5 and overall["layout_correct"] == 1.0
    assert table["level"].tolist() == ["cell_line", "cell_line", "overall"] + ["experiment"] * 5
    assert overall["raw"] < overall["masked"] < overall["assigned"]
    assert "Validation accuracy" in caplog.text and "HUVEC" in caplog.text

    wrong = pg.copy()
    wrong.loc[0, ["plate_1", "plate_2"]] = wrong.loc[0, ["plate_2", "plate_1"]].to_numpy()
    flagged = evaluate(out, wrong, wells, case["train_pg"]).set_index("name")
    assert flagged.loc[pg.loc[0, "experiment"], "layout_correct"] == 0.0


def test_logits_must_match_wells_and_groups(case):
    logits = simulated_logits(case["wells"], case["truth"], "test", strength=1.0)
    with pytest.raises(LogitsError, match="1 missing"):
        split_logits(logits.drop(columns=logits.columns[-1]), case["wells"], case["groups"])
    with pytest.raises(LogitsError, match="appears twice"):
        split_logits(pd.concat([logits, logits.iloc[:1]]), case["wells"], case["groups"])
    with pytest.raises(LogitsError, match="not treatment wells"):
        split_logits(logits.assign(id_code=logits["id_code"].str.replace("_B", "_C")), case["wells"], case["groups"])


def test_row_argmax_matches_numpy_on_both_memory_orders():
    x = np.random.default_rng(0).standard_normal((50, 700)).astype(np.float32)
    x[3, [10, 600]] = 9.0  # ties resolve to the first column, as in numpy
    for arr in (x, np.asfortranarray(x)):
        np.testing.assert_array_equal(row_argmax(arr, chunk=64), x.argmax(axis=1))


def test_ensemble_sums_members_aligned_by_well_and_refuses_other_wells():
    own = pd.DataFrame({"id_code": ["a", "b", "c"], "1": [1.0, 2.0, 3.0], "2": [0.0, 1.0, 0.0]}, dtype=None)
    member = own.iloc[::-1].assign(**{"1": [10.0, 20.0, 30.0]})  # rows in another order: c, b, a
    total = ensemble_logits(own, {"seed1": member})
    assert list(total["id_code"]) == ["a", "b", "c"]
    np.testing.assert_allclose(total["1"], [31.0, 22.0, 13.0])
    np.testing.assert_allclose(total["2"], [0.0, 2.0, 0.0])
    assert ensemble_logits(own, {}) is own
    with pytest.raises(LogitsError, match=r"^ensemble member short \(07_model_output/ensemble/test/short\.parquet\): "
                       r"its wells or siRNA columns differ from this run's test logits \(2 vs 3 wells"):
        ensemble_logits(own, {"short": own.iloc[:2]}, "test")
    with pytest.raises(LogitsError, match=r"columns differ .* \(3 vs 3 wells, 1 vs 2 columns\)"):
        ensemble_logits(own, {"one_column": own[["id_code", "1"]]}, "valid")


def test_an_ensemble_member_in_one_split_only_is_refused_naming_it():
    own = pd.DataFrame({"id_code": ["a", "b"], "1": [1.0, 2.0]})
    valid, test = ensemble_splits(own, own, {"seed1": own}, {"seed1": own})
    np.testing.assert_allclose(valid["1"], [2.0, 4.0])
    np.testing.assert_allclose(test["1"], [2.0, 4.0])
    with pytest.raises(LogitsError, match=r"^ensemble member seed2 is in 07_model_output/ensemble/test/ but not in "
                       r"ensemble/valid/: every member needs both splits .* copy that run's valid_logits\.parquet to "
                       r"ensemble/valid/seed2\.parquet, or remove the member$"):
        ensemble_splits(own, own, {"seed1": own}, {"seed1": own, "seed2": own})
    with pytest.raises(LogitsError, match=r"^ensemble member seed0 is in 07_model_output/ensemble/valid/ but not"):
        ensemble_splits(own, own, {"seed0": own}, {})
