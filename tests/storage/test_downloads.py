"""RxRx1 in either download layout: the Kaggle folder and the rxrx.ai release read into the same tables."""

import numpy as np
import pandas as pd
import pytest

from rxrx1_pipeline.kedro_io.datasets import RawMetadataDataset
from rxrx1_pipeline.pipelines.ingest.nodes import build_class_index, build_sites, ingest_download
from rxrx1_pipeline.storage.downloads import (
    KAGGLE,
    KAGGLE_FILES,
    RELEASE,
    Download,
    DownloadError,
    kaggle_to_release,
    read_download,
    release_to_kaggle,
)
from tests.builders import make_wells
from tests.conftest import CSVS


def kaggle_tables(wells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The four Kaggle CSVs of a wells table (test treatments unlabelled)."""
    base = ["id_code", "experiment", "plate", "well"]
    treat, train = wells["well_type"] == "treatment", wells["split"] == "train"
    return {"train.csv": wells.loc[train & treat, [*base, "sirna"]], "test.csv": wells.loc[~train & treat, base],
            "train_controls.csv": wells.loc[train & ~treat, [*base, "sirna", "well_type"]],
            "test_controls.csv": wells.loc[~train & ~treat, [*base, "sirna", "well_type"]]}


def labels_of(wells: pd.DataFrame, truth: pd.Series) -> pd.DataFrame:
    test = wells.loc[(wells["split"] == "test") & (wells["well_type"] == "treatment"), "id_code"]
    return pd.DataFrame({"id_code": test.to_numpy(), "sirna": truth[test].astype("Int64").to_numpy()})


def ingested(download: Download) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    wells, labels, layout = ingest_download(download)
    return wells, build_sites(wells, layout), build_class_index(wells), labels, layout


def test_both_layouts_ingest_to_the_same_tables_and_only_the_release_has_test_labels(tmp_path):
    wells, _, truth = make_wells(per_group=6, missing=("HUVEC-01_2_B05",))
    tables, labels = kaggle_tables(wells), labels_of(wells, truth)
    RawMetadataDataset(path=str(tmp_path / "kaggle")).save(Download(KAGGLE, tables))
    RawMetadataDataset(path=str(tmp_path / "release")).save(Download(RELEASE, tables, labels))
    assert sorted(p.name for p in (tmp_path / "release").iterdir()) == ["metadata.csv"]
    k_wells, k_sites, k_classes, k_labels, k_layout = ingested(RawMetadataDataset(path=str(tmp_path / "kaggle")).load())
    r_wells, r_sites, r_classes, r_labels, r_layout = ingested(RawMetadataDataset(path=str(tmp_path / "release")).load())
    pd.testing.assert_frame_equal(r_wells, k_wells)
    pd.testing.assert_frame_equal(r_classes, k_classes)
    assert k_labels.empty and (k_layout["layout"], r_layout["layout"]) == (KAGGLE, RELEASE)
    assert r_labels.set_index("id_code")["sirna"].to_dict() == labels.set_index("id_code")["sirna"].to_dict()
    assert (r_sites["w1"] == "images/" + k_sites["w1"]).all() and k_sites["w1"].iloc[0].startswith("test/")
    metadata = pd.read_csv(tmp_path / "release" / "metadata.csv")
    assert len(metadata) == 2 * len(wells) and metadata["site_id"].is_unique


def test_writing_one_layout_removes_the_other(tmp_path):
    wells, _, truth = make_wells(per_group=4)
    dataset = RawMetadataDataset(path=str(tmp_path))
    dataset.save(Download(RELEASE, kaggle_tables(wells), labels_of(wells, truth)))
    dataset.save(Download(KAGGLE, kaggle_tables(wells)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(KAGGLE_FILES) and dataset.load().layout == KAGGLE


@pytest.mark.parametrize("files, message", [
    ((), r"neither RxRx1 layout: no metadata.csv \(the rxrx.ai release\) and none of train.csv"),
    (("train.csv", "test.csv"), r"a Kaggle RxRx1 folder, but train_controls.csv, test_controls.csv missing"),
])
def test_a_folder_of_neither_layout_is_named_with_what_is_missing(tmp_path, files, message):
    for name in files:
        (tmp_path / name).write_text("id_code\n")
    with pytest.raises(DownloadError, match=message):
        read_download(tmp_path)
    assert not RawMetadataDataset(path=str(tmp_path)).exists()


def one_well(metadata: pd.DataFrame) -> np.ndarray:
    """Both sites of one well of the release's metadata."""
    return (metadata["well_id"] == metadata["well_id"].iloc[6]).to_numpy()


def release(wells, truth) -> pd.DataFrame:
    return kaggle_to_release(kaggle_tables(wells), labels_of(wells, truth))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.drop(columns="sirna_id"), r"metadata.csv: missing column\(s\) sirna_id"),
    (lambda m: m.assign(dataset=np.where(one_well(m), "valid", m["dataset"])), r"well .*: dataset 'valid' is not"),
    (lambda m: m.assign(sirna_id=np.where(one_well(m), -2, m["sirna_id"])), r"sirna_id -2 is not a non-negative"),
    (lambda m: m.assign(sirna_id=np.where(m.index == 1, 999, m["sirna_id"])),
     r"well (\S+): the sites of well \1 disagree on dataset, well_type or sirna_id"),
    (lambda m: m.assign(well_type=np.where(one_well(m), "empty", m["well_type"])), r"well_type 'empty' is not"),
])
def test_bad_release_metadata_is_named(change, message):
    wells, _, truth = make_wells(per_group=4)
    with pytest.raises(DownloadError, match=message):
        release_to_kaggle(change(release(wells, truth)))


def test_the_real_kaggle_metadata_as_the_release_ingests_to_the_same_tables(real_metadata, tmp_path):
    """The real competition CSVs converted into the release's metadata.csv shape (a row per site, ``sirna_id``)
    ingest to the same wells, sites (under images/) and classes. The real test labels are not in the Kaggle
    files: the test wells are given a placeholder label here, which only the release's test_labels carry."""
    tables = {f: pd.read_csv(real_metadata / f) for f in CSVS}
    placeholder = pd.DataFrame({"id_code": tables["test.csv"]["id_code"], "sirna": 0})
    metadata = kaggle_to_release(tables, placeholder)
    assert list(metadata.columns) == ["site_id", "well_id", "cell_type", "dataset", "experiment", "plate", "well",
                                      "site", "well_type", "sirna", "sirna_id"]
    assert len(metadata) == 2 * sum(len(t) for t in tables.values())
    metadata.to_csv(tmp_path / "metadata.csv", index=False)
    k_wells, k_sites, k_classes, _, _ = ingested(Download(KAGGLE, tables))
    r_wells, r_sites, r_classes, r_labels, _ = ingested(read_download(tmp_path))
    pd.testing.assert_frame_equal(r_wells, k_wells)
    pd.testing.assert_frame_equal(r_classes, k_classes)
    assert (r_sites["w1"] == "images/" + k_sites["w1"]).all() and len(r_labels) == len(tables["test.csv"])


def test_a_site_tree_exists_in_either_layout(tmp_path):
    from rxrx1_pipeline.kedro_io.datasets import SiteImagesDataset

    site = np.zeros((6, 4, 4), np.uint8)
    for layout, prefix in ((KAGGLE, "train/X-01/Plate1/B02_s1"), (RELEASE, "images/train/X-01/Plate1/B02_s1")):
        dataset = SiteImagesDataset(path=str(tmp_path / layout), workers=1)
        assert not dataset.exists()
        dataset.save({prefix: site})
        assert dataset.exists()
