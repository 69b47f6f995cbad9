"""Ingest on the real RxRx1 competition metadata (shared/rxrx1/metadata next to the checkout)."""

from pathlib import Path

import pandas as pd
import pytest

from rxrx1_pipeline.pipelines.ingest.nodes import (
    build_class_index,
    build_sites,
    build_wells,
)
from tests.conftest import CSVS


@pytest.fixture(scope="module")
def raw(real_metadata: Path) -> dict[str, pd.DataFrame]:
    return {f: pd.read_csv(real_metadata / f) for f in CSVS}


@pytest.fixture(scope="module")
def wells(raw) -> pd.DataFrame:
    return build_wells(*raw.values())


def test_treatment_well_counts(wells):
    treat = wells[wells["well_type"] == "treatment"]
    assert (treat["split"] == "train").sum() == 36_515
    assert (treat["split"] == "test").sum() == 19_897
    assert treat.loc[treat["split"] == "test", "sirna"].isna().all()
    assert treat.loc[treat["split"] == "train", "sirna"].between(0, 1107).all()
    assert treat.loc[treat["split"] == "train", "sirna"].nunique() == 1108


def test_control_counts_match_the_control_csvs(wells, raw):
    controls = wells[wells["well_type"] != "treatment"]
    for split in ("train", "test"):
        csv = raw[f"{split}_controls.csv"]
        mine = controls[controls["split"] == split]
        assert len(mine) == len(csv)
        assert mine["well_type"].value_counts().to_dict() == csv["well_type"].value_counts().to_dict()
    assert set(controls["sirna"]) == set(range(1108, 1139))
    assert (controls.loc[controls["well_type"] == "negative_control", "sirna"] == 1138).all()


def test_cell_lines_and_experiments(wells):
    assert sorted(wells["cell_line"].unique()) == ["HEPG2", "HUVEC", "RPE", "U2OS"]
    per_line = wells.groupby(["split", "cell_line"])["experiment"].nunique().to_dict()
    assert per_line == {("train", "HEPG2"): 7, ("train", "HUVEC"): 16, ("train", "RPE"): 7, ("train", "U2OS"): 3,
                        ("test", "HEPG2"): 4, ("test", "HUVEC"): 8, ("test", "RPE"): 4, ("test", "U2OS"): 2}
    per_plate = wells.groupby(["experiment", "plate"]).size()
    assert len(per_plate) == 51 * 4
    assert per_plate.max() == 308 and per_plate.min() >= 300  # a few plates miss wells (one holds 302)
    assert (per_plate == 308).sum() == 174


def test_sites_two_per_well(wells):
    sites = build_sites(wells)
    assert len(sites) == 2 * len(wells)
    assert sites["w1"].str.fullmatch(r"(train|test)/[A-Z0-9]+-\d\d/Plate[1-4]/[B-O]\d\d_s[12]_w1\.png").all()


def test_class_index_has_1108_treatments_then_31_controls(wells):
    classes = build_class_index(wells)
    assert classes["sirna"].tolist() == list(range(1139))
    assert classes["class_index"].tolist() == list(range(1139))
    assert (classes["well_type"] == "treatment").sum() == 1108
