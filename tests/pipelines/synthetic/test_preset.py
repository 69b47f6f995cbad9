"""The RxRx1-shaped preset (conf/rxrx1_shaped) has the real data's counts; checked on its layout alone,
without rendering an image."""

import pytest
from kedro.config import OmegaConfigLoader

from rxrx1_pipeline.pipelines.ingest.nodes import build_class_index, build_wells
from rxrx1_pipeline.pipelines.plate_groups.nodes import (
    assign_train_plate_groups,
    discover_sirna_groups,
    tabulate_plate_layouts,
)
from rxrx1_pipeline.pipelines.synthetic.nodes import design_plates
from rxrx1_pipeline.settings import CONFIG_LOADER_ARGS
from tests.conftest import ROOT
from rxrx1_pipeline.schema import Synthetic

REAL_EXPERIMENTS = {"HEPG2": (7, 4), "HUVEC": (16, 8), "RPE": (7, 4), "U2OS": (3, 2)}


@pytest.fixture(scope="module")
def preset():
    loader = OmegaConfigLoader(str(ROOT / "conf"), env="rxrx1_shaped", **CONFIG_LOADER_ARGS)
    params = loader["parameters"]
    *tables, truth = design_plates(Synthetic.model_validate(params["synthetic"]))
    return params, build_wells(*tables), truth


def test_preset_counts_match_rxrx1(preset):
    params, wells, truth = preset
    assert params["synthetic"]["image_size"] == params["HEPG2"]["training"]["image_size"] == 32
    exps = wells.groupby(["cell_line", "split"])["experiment"].nunique().unstack()
    assert {cl: (exps.loc[cl, "train"], exps.loc[cl, "test"]) for cl in exps.index} == REAL_EXPERIMENTS
    assert wells["experiment"].nunique() == 51
    classes = build_class_index(wells)
    assert len(classes) == 1139 and (classes["well_type"] == "treatment").sum() == 1108
    per_plate = truth.groupby(["experiment", "plate", "well_type"]).size().unstack()
    assert (per_plate["positive_control"] == 30).all() and (per_plate["negative_control"] == 1).all()
    assert per_plate["treatment"].max() == 277
    missing = 1 - per_plate["treatment"].sum() / (277 * len(per_plate))
    assert 0.005 < missing < 0.015  # ~1% of treatment wells left out, as in the real data
    assert truth.groupby(["split", "experiment"]).size().size == 51


def test_preset_plate_structure_is_discovered(preset):
    _, wells, _ = preset
    groups = discover_sirna_groups(wells)
    assert groups["group"].value_counts().tolist() == [277] * 4
    layouts = tabulate_plate_layouts(assign_train_plate_groups(wells, groups))
    assert len(layouts) == 4 and layouts["in_train"].sum() == 3  # the 4th layout is test-only
    assert layouts["train_experiments"].sum() == 33
