"""Copied experiments found from the calls alone, and answered from the map they copy."""

import numpy as np
import pandas as pd
import pytest

from rxrx1_pipeline.leak.copies import answer_from_copies, copied_well_labels, find_copied_experiments
from rxrx1_pipeline.leak.plates import id_code
from rxrx1_pipeline.schema import Copies
from tests.builders import make_wells
from tests.conftest import CSVS, ROOT

ORDER = {1: 2, 2: 3, 3: 4, 4: 1}  # the copy's plate p holds the source's plate ORDER[p]


def copy_case(accuracy: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """(wells, calls of the test treatment wells at ``accuracy``, truth) of five labelled experiments and three
    test ones; the test experiment HEPG2-09 repeats the labelled HUVEC-01's map with its plates reordered."""
    wells, members, truth = make_wells(per_group=40, seed=seed)
    source = wells[wells["experiment"] == "HUVEC-01"]
    copies = []
    for plate, from_plate in ORDER.items():
        rows = source[source["plate"] == from_plate].assign(experiment="HEPG2-09", cell_line="HEPG2", plate=plate,
                                                           split="test")
        rows["id_code"] = [id_code("HEPG2-09", plate, w) for w in rows["well"]]
        truth = pd.concat([truth, pd.Series(rows["sirna"].to_numpy(), index=rows["id_code"], name="sirna")])
        copies.append(rows.assign(sirna=rows["sirna"].where(rows["well_type"] != "treatment")))
    wells = pd.concat([wells, *copies], ignore_index=True).astype({"sirna": "Int64"})
    test = wells[(wells["split"] == "test") & (wells["well_type"] == "treatment")]
    rng = np.random.default_rng(seed + 1)
    group_of = {s: g for g, ss in members.items() for s in ss}
    right = truth[test["id_code"]].to_numpy().astype(np.int64)
    wrong = np.array([rng.choice(members[group_of[s]]) for s in right])
    calls = np.where(rng.random(len(test)) < accuracy, right, wrong)
    predictions = pd.DataFrame({"id_code": test["id_code"].to_numpy(), "experiment": test["experiment"].to_numpy(),
                                "plate": test["plate"].to_numpy(), "sirna_assigned": calls})
    return wells, predictions, truth


@pytest.mark.parametrize("accuracy", [0.15, 0.9])
def test_the_copy_is_found_with_its_source_and_plate_order_and_nothing_else(accuracy):
    wells, predictions, _ = copy_case(accuracy)
    table = find_copied_experiments(predictions, wells, Copies()).set_index("experiment")
    assert len(table) == 3 and table.index[table["copied"]].tolist() == ["HEPG2-09"]
    found = table.loc["HEPG2-09"]
    assert (found["source"], found["plate_order"]) == ("HUVEC-01", "2,3,4,1")
    assert found["agreement"] == pytest.approx(accuracy, abs=0.06) and found["runner_up"] < 0.1
    assert (table.loc[~table["copied"], "p_value"] > 1e-3).all()


def test_no_copy_is_declared_on_chance_agreement():
    """Over many seeds of calls that copy nothing, the corrected p-value never falls below the threshold."""
    for seed in range(5):
        wells, predictions, _ = copy_case(0.9, seed)
        predictions = predictions[predictions["experiment"] != "HEPG2-09"]
        table = find_copied_experiments(predictions, wells, Copies())
        assert not table["copied"].any() and table["agreement"].max() < 0.15


def test_copied_wells_are_answered_from_the_map_and_the_others_keep_their_calls():
    wells, predictions, truth = copy_case(0.15)
    table = find_copied_experiments(predictions, wells, Copies())
    answer = answer_from_copies(predictions, table, wells)
    copied = predictions["experiment"] == "HEPG2-09"
    assert (answer[copied] == truth[predictions.loc[copied, "id_code"]].to_numpy()).all()
    pd.testing.assert_series_equal(answer[~copied], predictions.loc[~copied, "sirna_assigned"].astype(np.int64))


def test_detection_off_leaves_the_calls():
    wells, predictions, _ = copy_case(0.9)
    table = find_copied_experiments(predictions, wells, Copies(detect=False))
    assert table.empty
    pd.testing.assert_series_equal(answer_from_copies(predictions, table, wells),
                                   predictions["sirna_assigned"].astype(np.int64))


def test_the_real_copy_is_found_from_weak_calls_on_the_real_metadata(real_metadata):
    """The real test set's copy (HUVEC-18: RPE-03's map, its plates 1-4 being RPE-03's 4, 1, 2, 3; HUVEC-07 shares
    that map in train) is found from calls only 5% right, nothing else is, and its wells get RPE-03's siRNAs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("copies_benchmark", ROOT / "benchmarks" / "copies.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from rxrx1_pipeline.pipelines.ingest.nodes import build_wells
    from rxrx1_pipeline.pipelines.plate_groups.nodes import discover_sirna_groups

    wells = build_wells(*(pd.read_csv(real_metadata / f) for f in CSVS))
    calls = bench.simulated_calls(wells, discover_sirna_groups(wells), accuracy=0.05, seed=0)
    table = find_copied_experiments(calls, wells, Copies()).set_index("experiment")
    assert table.index[table["copied"]].tolist() == ["HUVEC-18"]
    found = table.loc["HUVEC-18"]
    assert {found["source"], *found["same_map"].split(",")} == {"HUVEC-07", "RPE-03"} and found["runner_up"] < 0.015
    answer = answer_from_copies(calls, table.reset_index(), wells)
    rpe = wells[wells["experiment"] == "RPE-03"].set_index(["plate", "well"])["sirna"]
    mine = calls["experiment"] == "HUVEC-18"
    located = calls[mine].merge(wells[["id_code", "well"]], on="id_code")
    expected = rpe.reindex(list(zip(located["plate"].map({1: 4, 2: 1, 3: 2, 4: 3}), located["well"])))
    known = expected.notna().to_numpy()
    same = answer[mine].to_numpy()[known] == expected.to_numpy()[known]
    assert known.mean() > 0.99 and same.all(), (~same).sum()


def test_a_final_fit_labels_the_copied_wells_with_their_map():
    """The held-out run's copies label the copied experiment's test wells (the final fit trains on them); without
    final_fit, or without copies, no test well is fitted."""
    from rxrx1_pipeline.pipelines.train.nodes import select_sites, sites_to_fit
    from rxrx1_pipeline.pipelines.ingest.nodes import build_sites
    from tests.pipelines.conftest import TINY_TRAINING, changed

    wells, predictions, truth = copy_case(0.15)
    copies = find_copied_experiments(predictions, wells, Copies())
    labels = copied_well_labels(copies, wells)
    copied = wells[(wells["experiment"] == "HEPG2-09") & (wells["well_type"] == "treatment")]
    assert sorted(labels["id_code"]) == sorted(copied["id_code"])
    assert (labels["sirna"].to_numpy() == truth[labels["id_code"]].to_numpy()).all()
    assert copied_well_labels(copies.iloc[:0], wells).empty

    sirnas = sorted(wells["sirna"].dropna().astype(int).unique())
    classes = pd.DataFrame({"sirna": sirnas, "class_index": range(len(sirnas))}).merge(
        wells.dropna(subset=["sirna"]).drop_duplicates("sirna")[["sirna", "well_type"]].astype({"sirna": int}),
        on="sirna")
    sites = build_sites(wells)
    for final_fit, fitted_test in ((True, 2 * len(copied)), (False, 0)):
        training = changed(TINY_TRAINING, {"final_fit": final_fit, "valid_experiments": 1})
        table = select_sites(wells, sites, classes, "HEPG2", training, copies)
        fit = sites_to_fit(table, training.controls, training.final_fit)
        test = fit[(fit["role"] == "test") & (fit["well_type"] == "treatment")]
        assert len(test) == fitted_test and set(test["experiment"]) <= {"HEPG2-09"}
        if final_fit:
            sirna_of = classes.set_index("class_index")["sirna"]
            assert (sirna_of.loc[test["class_index"]].to_numpy() == truth[test["id_code"]].to_numpy()).all()


def test_a_final_fit_trains_on_copied_treatment_wells_only():
    """The copied map labels treatment wells; the test controls stay out unless training.controls says so."""
    from rxrx1_pipeline.pipelines.train.nodes import sites_to_fit

    table = pd.DataFrame({"role": ["test"] * 4, "well_type": ["treatment", "treatment", "negative_control",
                                                              "positive_control"], "class_index": [3, -1, 7, 8]})
    assert sites_to_fit(table, "train_experiments", final_fit=True).index.tolist() == [0]
    assert sites_to_fit(table, "all_experiments", final_fit=True).index.tolist() == [0, 2, 3]
    assert sites_to_fit(table, "train_experiments", final_fit=False).empty
