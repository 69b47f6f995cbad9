"""Plate-group discovery on hand-built wells and on the real RxRx1 metadata."""

import logging
from pathlib import Path

import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from rxrx1_pipeline.pipelines.ingest.nodes import build_wells
from rxrx1_pipeline.pipelines.plate_groups import create_pipeline
from rxrx1_pipeline.pipelines.plate_groups.nodes import (
    PlateStructureError,
    assign_train_plate_groups,
    discover_sirna_groups,
    tabulate_plate_layouts,
)
from rxrx1_pipeline.leak.plates import layout_matrix
from tests.builders import make_wells
from tests.conftest import CSVS


def _discover(wells):
    groups = discover_sirna_groups(wells)
    plates = assign_train_plate_groups(wells, groups)
    return groups, plates, tabulate_plate_layouts(plates)


def test_groups_plates_and_layouts_are_recovered():
    wells, members, _ = make_wells(missing=("HEPG2-01_1_B03", "HUVEC-02_4_B05"))
    groups, plates, layouts = _discover(wells)
    found = groups.groupby("group")["sirna"].apply(sorted).tolist()
    assert sorted(found) == sorted(members.values())
    assert groups.sort_values("sirna")["group"].iloc[0] == 0  # groups numbered by smallest siRNA
    by_set = {tuple(v): g for g, v in members.items()}  # builder group -> discovered group
    rename = {by_set[tuple(v)]: g for g, v in groups.groupby("group")["sirna"].apply(sorted).items()}
    exp1 = plates[plates["experiment"] == "HEPG2-01"].sort_values("plate")["group"].tolist()
    assert exp1 == [rename[g] for g in (1, 2, 3, 0)]
    assert len(plates) == 5 * 4 and list(plates.columns) == ["experiment", "plate", "group"]

    plate_numbers, matrix = layout_matrix(layouts)
    assert plate_numbers.tolist() == [1, 2, 3, 4]
    assert layouts["train_experiments"].tolist() == [3, 2, 0, 0]
    assert layouts["layout"].tolist() == [0, 1, 2, 3]
    expected = {tuple(rename[g] for g in lay) for lay in ((1, 2, 3, 0), (2, 3, 0, 1), (3, 0, 1, 2), (0, 1, 2, 3))}
    assert {tuple(r) for r in matrix.tolist()} == expected
    assert [tuple(r) for r in matrix[:2].tolist()] == [tuple(rename[g] for g in lay)
                                                      for lay in ((1, 2, 3, 0), (2, 3, 0, 1))]


def test_mixed_plate_is_an_error_naming_it():
    wells, members, _ = make_wells()
    bad = (wells["id_code"] == "HUVEC-02_3_B04")  # layout (2, 3, 0, 1): plate 3 holds group 0
    wells.loc[bad, "sirna"] = members[1][0]
    with pytest.raises(PlateStructureError, match=r"HUVEC-02 plate 3 holds siRNAs of several plate groups"):
        _discover(wells)


def test_group_on_two_plates_is_an_error_naming_them():
    wells, members, _ = make_wells()
    plate1 = wells[(wells["id_code"].str.startswith("HEPG2-02_1_")) & (wells["well_type"] == "treatment")]
    plate2 = wells[(wells["id_code"].str.startswith("HEPG2-02_2_")) & (wells["well_type"] == "treatment")]
    wells.loc[plate2.index, "sirna"] = plate1["sirna"].to_numpy()
    with pytest.raises(PlateStructureError, match=r"HEPG2-02 plates 1 and 2 hold the same plate group"):
        _discover(wells)


def test_pipeline_logs_the_structure(caplog):
    wells, _, _ = make_wells()
    catalog = DataCatalog()
    catalog["wells"] = wells
    with caplog.at_level(logging.INFO):
        out = SequentialRunner().run(create_pipeline(), catalog)
    assert len(out["plate_layouts"].load()) == 4  # the only output no node consumes
    assert "4 groups x 5 siRNAs" in caplog.text
    assert "2 of 4 candidates used in train, by 3/2 experiments" in caplog.text


def test_real_metadata_has_4_groups_of_277_and_layouts_22_7_4(real_metadata: Path):
    wells = build_wells(*(pd.read_csv(real_metadata / f) for f in CSVS))
    groups, plates, layouts = _discover(wells)
    assert groups["group"].value_counts().tolist() == [277] * 4
    assert len(plates) == 33 * 4
    assert layouts["train_experiments"].tolist() == [22, 7, 4, 0]
    assert layouts["in_train"].tolist() == [True, True, True, False]


def test_train_experiment_missing_plates(caplog):
    wells, _, _ = make_wells()
    one = wells["id_code"].str.startswith("HEPG2-01_4_")  # one plate gone: its group is implied
    two = wells["id_code"].str.match(r"HUVEC-01_[12]_")  # two plates gone: layout left out
    with caplog.at_level(logging.WARNING):
        _, plates, layouts = _discover(wells[~(one | two)])
    assert len(plates) == 5 * 4 - 3
    assert layouts["train_experiments"].tolist() == [2, 2, 0, 0]  # HEPG2-01 still counted
    assert "HUVEC-01 lacks plates [1, 2]" in caplog.text
