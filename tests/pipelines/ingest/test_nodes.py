"""Ingest nodes on a tiny hand-written RxRx1 metadata set, and one test per malformed input."""

import io
import re

import pandas as pd
import pytest

from rxrx1_pipeline.pipelines.ingest.nodes import (
    WELL_COLUMNS,
    MetadataError,
    build_class_index,
    build_sites,
    build_wells,
)
from tests.conftest import session_run

# Treatment siRNAs 0-9, positive controls 10-11, negative control 12.
CSV = {
    "train.csv": """id_code,experiment,plate,well,sirna
HEPG2-01_1_B03,HEPG2-01,1,B03,0
HEPG2-01_1_B04,HEPG2-01,1,B04,1
HEPG2-01_2_C05,HEPG2-01,2,C05,2
HUVEC-01_1_O23,HUVEC-01,1,O23,3
""",
    "test.csv": """id_code,experiment,plate,well
HEPG2-02_1_B03,HEPG2-02,1,B03
HEPG2-02_3_D10,HEPG2-02,3,D10
HUVEC-02_4_O22,HUVEC-02,4,O22
""",
    "train_controls.csv": """id_code,experiment,plate,well,sirna,well_type
HEPG2-01_1_B02,HEPG2-01,1,B02,12,negative_control
HEPG2-01_1_C03,HEPG2-01,1,C03,10,positive_control
HUVEC-01_1_B02,HUVEC-01,1,B02,12,negative_control
""",
    "test_controls.csv": """id_code,experiment,plate,well,sirna,well_type
HEPG2-02_1_B02,HEPG2-02,1,B02,12,negative_control
HUVEC-02_4_C04,HUVEC-02,4,C04,11,positive_control
""",
}
FILES = list(CSV)  # argument order of build_wells


def tables(edits: dict[str, str] | None = None) -> list[pd.DataFrame]:
    """The four tables as the CSV datasets load them; ``edits`` replaces a file's text."""
    text = {**CSV, **(edits or {})}
    return [pd.read_csv(io.StringIO(text[f])) for f in FILES]


def edit(file: str, old: str, new: str) -> dict[str, str]:
    assert old in CSV[file], old
    return {file: CSV[file].replace(old, new)}


def append(file: str, line: str) -> dict[str, str]:
    return {file: CSV[file] + line + "\n"}


@pytest.fixture
def wells() -> pd.DataFrame:
    return build_wells(*tables())


def test_build_wells_columns_dtypes_counts(wells):
    assert list(wells.columns) == WELL_COLUMNS
    assert len(wells) == 12
    assert wells["id_code"].is_unique
    assert wells["plate"].dtype == "int64"
    assert wells["sirna"].dtype == "Int64"
    counts = wells.groupby(["split", "well_type"]).size().to_dict()
    assert counts == {("train", "treatment"): 4, ("train", "positive_control"): 1,
                      ("train", "negative_control"): 2, ("test", "treatment"): 3,
                      ("test", "positive_control"): 1, ("test", "negative_control"): 1}


def test_build_wells_values(wells):
    w = wells.set_index("id_code")
    assert w.loc["HUVEC-01_1_O23"].to_dict() == dict(
        experiment="HUVEC-01", cell_line="HUVEC", plate=1, well="O23", split="train",
        well_type="treatment", sirna=3)
    assert w.loc["HUVEC-02_4_C04", "sirna"] == 11
    assert w.loc["HUVEC-02_4_C04", "split"] == "test"
    assert set(wells["cell_line"]) == {"HEPG2", "HUVEC"}
    test_treat = wells[(wells["split"] == "test") & (wells["well_type"] == "treatment")]
    assert len(test_treat) == 3 and test_treat["sirna"].isna().all()
    assert wells.loc[wells["well_type"] != "treatment", "sirna"].notna().all()
    assert wells[wells["split"] == "train"]["sirna"].notna().all()


def test_build_sites_two_rows_per_well_with_paths(wells):
    sites = build_sites(wells)
    assert len(sites) == 2 * len(wells)
    assert sites.groupby("id_code")["site"].apply(lambda s: sorted(s) == [1, 2]).all()
    assert set(sites["id_code"]) == set(wells["id_code"])
    assert [f"w{c}" for c in range(1, 7)] == [c for c in sites.columns if re.fullmatch(r"w\d", c)]
    row = sites[(sites["id_code"] == "HUVEC-02_4_O22") & (sites["site"] == 2)].iloc[0]
    assert row["split"] == "test"
    assert row["w1"] == "test/HUVEC-02/Plate4/O22_s2_w1.png"
    assert row["w6"] == "test/HUVEC-02/Plate4/O22_s2_w6.png"
    row = sites[(sites["id_code"] == "HEPG2-01_1_B02") & (sites["site"] == 1)].iloc[0]
    assert row["w3"] == "train/HEPG2-01/Plate1/B02_s1_w3.png"


def test_build_class_index_train_labels_only(wells):
    classes = build_class_index(wells)
    assert classes["sirna"].tolist() == [0, 1, 2, 3, 10, 12]  # 11 is a control of test only
    assert classes["class_index"].tolist() == list(range(6))
    assert classes["well_type"].tolist() == ["treatment"] * 4 + ["positive_control", "negative_control"]


def test_control_files_may_be_empty():
    header = "id_code,experiment,plate,well,sirna,well_type\n"
    wells = build_wells(*tables({"train_controls.csv": header, "test_controls.csv": header}))
    assert len(wells) == 7 and (wells["well_type"] == "treatment").all()
    assert wells["sirna"].dtype == "Int64" and wells["sirna"].notna().sum() == 4


BAD_INPUTS = {
    "missing_column": (edit("train.csv", "well,sirna", "well,sirna_id"),
                       r"^train\.csv: missing column\(s\) sirna"),
    "missing_well_type": ({"test_controls.csv": CSV["test_controls.csv"].replace(",well_type", "").replace(
        ",negative_control", "").replace(",positive_control", "")},
        r"^test_controls\.csv: missing column\(s\) well_type"),
    "duplicate_id_code": (append("test.csv", "HEPG2-02_3_D10,HEPG2-02,3,D10"),
                          r"^test\.csv: row HEPG2-02_3_D10: duplicate id_code"),
    "id_code_vs_well": (edit("train.csv", "HEPG2-01_1_B04,HEPG2-01,1,B04", "HEPG2-01_1_B04,HEPG2-01,1,B05"),
                        r"^train\.csv: row HEPG2-01_1_B04: id_code disagrees .*expected HEPG2-01_1_B05"),
    "id_code_vs_plate": (edit("test.csv", "HEPG2-02_3_D10,HEPG2-02,3", "HEPG2-02_3_D10,HEPG2-02,2"),
                         r"^test\.csv: row HEPG2-02_3_D10: id_code disagrees .*expected HEPG2-02_2_D10"),
    "id_code_vs_experiment": (edit("train_controls.csv", "HUVEC-01_1_B02,HUVEC-01", "HUVEC-01_1_B02,HUVEC-02"),
                              r"^train_controls\.csv: row HUVEC-01_1_B02: id_code disagrees .*HUVEC-02_1_B02"),
    "well_A01": (append("test.csv", "HEPG2-02_1_A01,HEPG2-02,1,A01"),
                 r"^test\.csv: row HEPG2-02_1_A01: well 'A01' outside B02-O23"),
    "well_P24": (append("train.csv", "HEPG2-01_1_P24,HEPG2-01,1,P24,4"),
                 r"^train\.csv: row HEPG2-01_1_P24: well 'P24' outside B02-O23"),
    "well_B01": (append("train.csv", "HEPG2-01_1_B01,HEPG2-01,1,B01,4"),
                 r"^train\.csv: row HEPG2-01_1_B01: well 'B01' outside B02-O23"),
    "well_O24": (append("test_controls.csv", "HUVEC-02_4_O24,HUVEC-02,4,O24,10,positive_control"),
                 r"^test_controls\.csv: row HUVEC-02_4_O24: well 'O24' outside B02-O23"),
    "plate_0": (append("test.csv", "HEPG2-02_0_C03,HEPG2-02,0,C03"),
                r"^test\.csv: row HEPG2-02_0_C03: plate 0 outside 1-4"),
    "plate_5": (append("train.csv", "HEPG2-01_5_C03,HEPG2-01,5,C03,4"),
                r"^train\.csv: row HEPG2-01_5_C03: plate 5 outside 1-4"),
    "plate_text": (append("train.csv", "HEPG2-01_x_C03,HEPG2-01,x,C03,4"),
                   r"^train\.csv: row HEPG2-01_x_C03: plate 'x' outside 1-4"),
    "sirna_negative": (edit("train.csv", "B04,1", "B04,-1"),
                       r"^train\.csv: row HEPG2-01_1_B04: siRNA id -1 out of range"),
    "sirna_non_integer": (edit("train.csv", "B04,1", "B04,1.5"),
                          r"^train\.csv: row HEPG2-01_1_B04: siRNA id 1\.5 out of range"),
    "sirna_text": (edit("train.csv", "B04,1", "B04,abc"),
                   r"^train\.csv: row HEPG2-01_1_B04: siRNA id 'abc' out of range"),
    "sirna_empty": (edit("train_controls.csv", "C03,10,", "C03,,"),
                    r"^train_controls\.csv: row HEPG2-01_1_C03: siRNA id nan out of range"),
    "treatment_sirna_is_control_id": (
        edit("train.csv", "C05,2", "C05,10"),
        r"^train\.csv: row HEPG2-01_2_C05: siRNA id 10 out of range \(treatment ids must be below the control "
        r"ids, >= 10\); it is the positive_control id of train_controls\.csv \(row HEPG2-01_1_C03\)$"),
    "control_id_is_a_treatment_id": (
        edit("train_controls.csv", "C03,10,positive_control", "C03,1,positive_control"),
        r"^train_controls\.csv: row HEPG2-01_1_C03: positive_control siRNA id 1 is also a treatment siRNA id "
        r"\(train\.csv, e\.g\. row HEPG2-01_1_B04\); control ids must lie above every treatment id$"),
    "control_id_of_both_kinds": (
        edit("test_controls.csv", "C04,11,positive_control", "C04,12,positive_control"),
        r"^test_controls\.csv: row HUVEC-02_4_C04: positive_control siRNA id 12 is also the negative_control id of "
        r"train_controls\.csv \(e\.g\. row HEPG2-01_1_B02\): a control id must be of one kind"),
    "test_csv_header_only": ({"test.csv": "id_code,experiment,plate,well\n"},
                             r"^test\.csv: no wells \(a header only\): there is nothing to predict"),
    "unknown_well_type": (edit("test_controls.csv", "11,positive_control", "11,treatment"),
                          r"^test_controls\.csv: row HUVEC-02_4_C04: unknown well_type 'treatment'"),
    "misspelt_well_type": (edit("train_controls.csv", "12,negative_control\nHEPG2", "12,negative\nHEPG2"),
                           r"^train_controls\.csv: row HEPG2-01_1_B02: unknown well_type 'negative'"),
    "id_code_in_train_and_test": (
        append("test.csv", "HEPG2-01_1_B03,HEPG2-01,1,B03"),
        r"^test\.csv: row HEPG2-01_1_B03: id_code also listed in train\.csv"),
    "id_code_in_train_and_controls": (
        append("train_controls.csv", "HEPG2-01_2_C05,HEPG2-01,2,C05,11,positive_control"),
        r"^train_controls\.csv: row HEPG2-01_2_C05: id_code also listed in train\.csv"),
    "empty_experiment": (edit("test.csv", "HUVEC-02_4_O22,HUVEC-02", "HUVEC-02_4_O22,"),
                         r"^test\.csv: row HUVEC-02_4_O22: empty experiment"),
    "unknown_cell_line": (append("test.csv", "A549-01_1_C03,A549-01,1,C03"),
                          r"^test\.csv: row A549-01_1_C03: cell line 'A549' has no pipeline namespace"),
    "experiment_in_train_and_test": (
        append("test.csv", "HEPG2-01_3_C03,HEPG2-01,3,C03"),
        r"^test\.csv: row HEPG2-01_3_C03: experiment HEPG2-01 is in both the train and the test files"),
    "cell_line_without_train": (append("test.csv", "RPE-01_1_C03,RPE-01,1,C03"),
                                r"^test\.csv: row RPE-01_1_C03: cell line RPE has no labelled train experiment"),
}


@pytest.mark.parametrize("edits, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_named(edits, message):
    with pytest.raises(MetadataError, match=message):
        build_wells(*tables(edits))


def test_a_test_set_of_some_cell_lines_is_ingested_and_says_which_lines_it_lacks(caplog):
    """A lab scoring new plates of one line: the other lines have no test wells; their models still train."""
    import logging

    with caplog.at_level(logging.INFO):
        wells = build_wells(*tables(edit("test.csv", "HUVEC-02_4_O22,HUVEC-02,4,O22\n", "")))
    assert set(wells.loc[(wells["split"] == "test") & (wells["well_type"] == "treatment"), "cell_line"]) == {"HEPG2"}
    assert "No test wells of cell line(s) HUVEC: their models still train" in caplog.text


def test_a_data_set_of_one_cell_line_is_ingested_and_says_which_lines_get_no_model(caplog):
    import logging

    one = {f: "\n".join(line for line in CSV[f].splitlines() if "HUVEC" not in line) + "\n" for f in FILES}
    with caplog.at_level(logging.INFO):
        wells = build_wells(*tables(one))
    assert set(wells["cell_line"]) == {"HEPG2"} and len(wells) == 8
    assert "No wells of cell line(s) HUVEC, RPE, U2OS in this data set: they get no model" in caplog.text


def test_several_bad_rows_are_counted():
    edits = append("train.csv", "HEPG2-01_1_A01,HEPG2-01,1,A01,4\nHEPG2-01_1_A02,HEPG2-01,1,A02,5")
    with pytest.raises(MetadataError, match=r"row HEPG2-01_1_A01: .*\(and 1 more rows\)$"):
        build_wells(*tables(edits))


def test_missing_file_fails_the_ingest_run(project_copy, tmp_path):
    data_root = tmp_path / "raw"
    data_root.mkdir()
    for f in FILES:
        if f != "test.csv":
            (data_root / f).write_text(CSV[f])
    with pytest.raises(Exception) as failure:
        session_run(project_copy, "ingest", {"data_root": str(data_root)})
    assert f"{data_root}: a Kaggle RxRx1 folder, but test.csv missing" in repr(failure.value.__cause__) + str(
        failure.value)
    assert not (project_copy / "data/02_intermediate/wells.parquet").exists()
    assert not (project_copy / "data/02_intermediate/sites.parquet").exists()

    (data_root / "test.csv").write_text(CSV["test.csv"])  # the same run succeeds once the file is there
    session_run(project_copy, "ingest", {"data_root": str(data_root)})
    assert len(pd.read_parquet(project_copy / "data/02_intermediate/wells.parquet")) == 12
