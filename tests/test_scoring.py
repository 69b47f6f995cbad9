"""The scoring model's input (rxrx1_pipeline.pipelines.score.sites) and the scoring nodes on their own; the round trip
through MLflow of a trained run is in test_full_run."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rxrx1_pipeline.storage.images import DecodeJob, ImageStore, MemoryStore, PngSites, build_store, read_fitted, write_site
from rxrx1_pipeline.pipelines.score.nodes import prepare_new_sites, score_cell_line
from rxrx1_pipeline.schema import ImageSource
from rxrx1_pipeline.pipelines.score import ScoringInputError, check_new_sites, experiment_sites
from tests.builders import make_wells
from tests.storage.test_downloads import kaggle_tables, labels_of


def _sites(**changes) -> pd.DataFrame:
    table = pd.DataFrame({"experiment": ["HUVEC-17"] * 4, "plate": [1, 1, 2, 2], "well": ["B02", "B02", "C05", "C05"],
                          "site": [1, 2, 1, 2], "image_prefix": [f"x/{i}" for i in range(4)]})
    for column, (row, value) in changes.items():
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
    return table


def test_a_valid_table_gets_cell_line_id_code_and_treatment_default():
    sites = check_new_sites(_sites().iloc[::-1])
    assert list(sites["id_code"]) == ["HUVEC-17_1_B02"] * 2 + ["HUVEC-17_2_C05"] * 2
    assert list(sites["site"]) == [1, 2, 1, 2] and set(sites["cell_line"]) == {"HUVEC"}
    assert set(sites["well_type"]) == {"treatment"}
    _, wells = prepare_new_sites(_sites())
    assert len(wells) == 2 and wells["sirna"].isna().all() and list(wells.columns[:3]) == ["id_code", "experiment",
                                                                                          "cell_line"]


@pytest.mark.parametrize(("table", "message"), [
    (_sites().drop(columns="image_prefix"), "lacks column(s) image_prefix"),
    (_sites(plate=(2, 7)), "row 2 (HUVEC-17 plate 7 C05 site 1): plate 7 is not one of [1, 2, 3, 4]"),
    (_sites(site=(1, 3)), "row 1 (HUVEC-17 plate 1 B02 site 3): site 3 is not one of [1, 2]"),
    (_sites(well=(0, "A01")), "row 0 (HUVEC-17 plate 1 A01 site 1): well 'A01' outside B02-O23"),
    (_sites(experiment=(3, "MCF7-01")), "row 3 (MCF7-01 plate 2 C05 site 2): cell line 'MCF7' has no model"),
    (_sites(experiment=(0, "HUVEC17")), "experiment 'HUVEC17' is not CELLLINE-NN"),
    (_sites(site=(1, 1)), "row 1 (HUVEC-17 plate 1 B02 site 1): this site is listed twice"),
    (_sites().assign(well_type="negative_control"), "no treatment site: there is nothing to score"),
    (_sites().assign(well_type=["treatment", "negative_control", "treatment", "treatment"]),
     "row 0 (HUVEC-17 plate 1 B02 site 1): the sites of this well disagree on its well_type"),
    (_sites().assign(well_type=["treatment", "treatment", "blank", "blank"]),
     "row 2 (HUVEC-17 plate 2 C05 site 1): well_type 'blank' is not one of"),
    ({"experiment": "HUVEC-17"}, "takes a table (pandas DataFrame) of sites, got dict"),
])
def test_bad_input_is_refused_naming_the_row_and_problem(table, message):
    with pytest.raises(ScoringInputError) as error:
        check_new_sites(table)
    assert message in str(error.value)


def test_experiment_sites_reads_a_kaggle_folder(tmp_path: Path):
    pd.DataFrame({"id_code": ["U2OS-05_1_B02"], "experiment": ["U2OS-05"], "plate": [1], "well": ["B02"]}).to_csv(
        tmp_path / "test.csv", index=False)
    pd.DataFrame({"id_code": ["U2OS-05_1_B03", "RPE-01_1_B03"], "experiment": ["U2OS-05", "RPE-01"], "plate": [1, 1],
                  "well": ["B03", "B03"], "sirna": [1108, 1108], "well_type": ["negative_control"] * 2}).to_csv(
        tmp_path / "test_controls.csv", index=False)
    sites = experiment_sites(tmp_path, experiments=["U2OS-05"])
    assert sorted(zip(sites["well"], sites["site"], sites["well_type"])) == [
        ("B02", 1, "treatment"), ("B02", 2, "treatment"), ("B03", 1, "negative_control"), ("B03", 2, "negative_control")]
    assert str(tmp_path / "test/U2OS-05/Plate1/B02_s2") in set(sites["image_prefix"])
    with pytest.raises(ScoringInputError, match="experiment.s. HEPG2-01 are not in"):
        experiment_sites(tmp_path, experiments=["HEPG2-01"])
    with pytest.raises(ScoringInputError, match="no train.csv in"):
        experiment_sites(tmp_path, split="train")


def test_experiment_sites_reads_a_release_folder_as_the_kaggle_one(tmp_path: Path):
    """The same experiments in the rxrx.ai layout give the same sites table, with the images under images/."""
    from rxrx1_pipeline.kedro_io.datasets import RawMetadataDataset
    from rxrx1_pipeline.storage.downloads import KAGGLE, RELEASE, Download, read_download

    wells, _, truth = make_wells(per_group=3)
    kaggle, release = tmp_path / "kaggle", tmp_path / "release"
    tables = kaggle_tables(wells)
    RawMetadataDataset(path=str(kaggle)).save(Download(KAGGLE, tables))
    RawMetadataDataset(path=str(release)).save(Download(RELEASE, tables, labels_of(wells, truth)))
    assert read_download(release).layout == RELEASE
    mine, theirs = experiment_sites(release), experiment_sites(kaggle)
    key = ["experiment", "plate", "well", "site"]
    mine, theirs = mine.sort_values(key, ignore_index=True), theirs.sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(mine.drop(columns="image_prefix"), theirs.drop(columns="image_prefix"),
                                  check_dtype=False)
    assert (mine["image_prefix"] == theirs["image_prefix"].str.replace(str(kaggle), str(release / "images"))).all()


def test_memory_store_moments_are_the_image_store_ones(tmp_path: Path):
    """The scoring model's plate statistics are summed from the same per-site moments as the run's image store."""
    rng = np.random.default_rng(0)
    prefixes = ("test/U2OS-05/Plate1/B02_s1", "test/U2OS-05/Plate1/B02_s2")
    for prefix in prefixes:
        write_site(tmp_path / "png", prefix, rng.integers(0, 256, (6, 12, 12), dtype=np.uint8))
    source = PngSites(tmp_path / "png")
    build_store(tmp_path / "store", DecodeJob(source, prefixes, 8), workers=1)
    built = ImageStore(tmp_path / "store")
    memory = MemoryStore(np.stack([read_fitted(source, p, 8, "resize") for p in prefixes]))
    assert len(memory) == 2 and memory.image_size == 8
    np.testing.assert_array_equal(memory.moments, built.moments)
    np.testing.assert_array_equal(memory.read(1), built.read(1))


def _scored_sites(tmp_path: Path, well_types: list[str]) -> pd.DataFrame:
    sites, _ = prepare_new_sites(_sites().assign(well_type=well_types,
                                                 image_prefix=[str(tmp_path / f"missing/{i}") for i in range(4)]))
    return sites


def test_a_missing_image_is_named(tmp_path: Path):
    sites = _scored_sites(tmp_path, ["treatment"] * 4)
    with pytest.raises(OSError, match=f"cannot read image {tmp_path / 'missing/0_w1.png'}"):
        score_cell_line({"settings": {"image_size": 8}}, sites, pd.DataFrame(), "HUVEC", None, ImageSource())


def test_a_cell_line_without_treatment_sites_scores_nothing_and_reads_nothing(tmp_path: Path):
    controls_only = _scored_sites(tmp_path, ["treatment", "treatment", "negative_control", "negative_control"])
    controls_only = controls_only[controls_only["well_type"] != "treatment"]
    for sites, line in ((controls_only, "HUVEC"), (_scored_sites(tmp_path, ["treatment"] * 4), "RPE")):
        logits, embeddings = score_cell_line({"settings": {"image_size": 8}}, sites, pd.DataFrame(), line, None,
                                             ImageSource())  # the images do not exist: none is read
        assert logits.empty and embeddings.empty


def test_a_table_without_well_type_is_all_treatments_with_a_warning_and_controls_counted_in_are_named(caplog):
    """No well_type column: every site is a treatment (logged); a plate with more treatment wells than a plate
    group has siRNAs (its controls listed without the column) is refused naming well_type."""
    import logging

    groups = pd.DataFrame({"sirna": [0, 1, 2, 3], "group": [0, 0, 1, 1]})  # 2 siRNAs per plate group
    with caplog.at_level(logging.WARNING):
        sites, wells = prepare_new_sites(_sites(), groups)  # one treatment well per plate: fine
    assert set(sites["well_type"]) == {"treatment"} and len(wells) == 2
    assert "has no well_type column: every site is taken as a treatment well" in caplog.text
    three = pd.DataFrame({"experiment": ["HUVEC-17"] * 3, "plate": [1] * 3, "well": ["B02", "B03", "B04"],
                          "site": [1] * 3, "image_prefix": ["x/0", "x/1", "x/2"]})
    with pytest.raises(ScoringInputError, match=r"HUVEC-17 plate 1 has 3 treatment wells but a plate group holds 2 "
                                                r"siRNAs: .*give them a well_type column"):
        prepare_new_sites(three, groups)
    controls_named = three.assign(well_type=["treatment", "treatment", "negative_control"])
    assert len(prepare_new_sites(controls_named, groups)[1]) == 3
