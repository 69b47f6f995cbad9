"""Catalog guarantees: outputs land atomically (old file or new, never a part); cached per-well tables are
checked on load, naming the file, rows and columns."""

import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from kedro.io import DatasetError
from kedro_datasets.pandas import CSVDataset

from rxrx1_pipeline.kedro_io.catalog import AtomicDataCatalog
from rxrx1_pipeline.kedro_io.datasets import WellTableDataset, WellTableError, check_well_table


class Exploding:
    """A cell value whose text form fails: ``to_csv`` dies after writing the rows before it."""

    def __str__(self):
        raise RuntimeError("killed mid-write")


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "out" / "submission.csv"
    catalog = AtomicDataCatalog(datasets={"submission": CSVDataset(filepath=str(target),
                                                                   save_args={"index": False})})
    good = pd.DataFrame({"id_code": [f"w{i}" for i in range(5000)], "sirna": np.arange(5000)})
    catalog.save("submission", good)
    bad = good.astype({"sirna": object})
    bad.loc[4000, "sirna"] = Exploding()
    with pytest.raises(DatasetError):
        catalog.save("submission", bad)
    pd.testing.assert_frame_equal(pd.read_csv(target), good)
    assert sorted(p.name for p in target.parent.iterdir()) == ["submission.csv"]  # no temporary left
    catalog.save("submission", good.head(3))  # and a good write replaces it
    assert len(pd.read_csv(target)) == 3


def test_a_write_killed_with_sigkill_leaves_the_old_file(tmp_path):
    script = (
        "import os, signal, pandas as pd\n"
        "from kedro_datasets.pandas import CSVDataset\n"
        "from rxrx1_pipeline.kedro_io.catalog import AtomicDataCatalog\n"
        "class Kill:\n"
        "    def __str__(self): os.kill(os.getpid(), signal.SIGKILL)\n"
        f"c = AtomicDataCatalog(datasets={{'t': CSVDataset(filepath={str(tmp_path / 'table.csv')!r})}})\n"
        "c.save('t', pd.DataFrame({'a': [1, 2, 3]}))\n"
        "c.save('t', pd.DataFrame({'a': [4] * 10000 + [Kill()]}))\n")
    result = subprocess.run([sys.executable, "-c", script])
    assert result.returncode == -signal.SIGKILL
    assert pd.read_csv(tmp_path / "table.csv")["a"].tolist() == [1, 2, 3]
    assert len(list(tmp_path.glob(".table.csv.*.partial"))) == 1  # the killed write's temporary
    AtomicDataCatalog(datasets={"t": CSVDataset(filepath=str(tmp_path / "table.csv"))}).save(
        "t", pd.DataFrame({"a": [5]}))
    assert not list(tmp_path.glob(".table.csv.*.partial"))  # cleared by the next write


def test_project_catalog_is_atomic():
    from rxrx1_pipeline import settings

    assert settings.DATA_CATALOG_CLASS is AtomicDataCatalog


def logits(n: int = 4) -> pd.DataFrame:
    table = pd.DataFrame(np.random.default_rng(0).standard_normal((n, 3)).astype(np.float32), columns=["0", "1", "2"])
    table.insert(0, "id_code", [f"X-01_1_B{i + 2:02d}" for i in range(n)])
    return table


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_cached_logits_fail_on_load_naming_the_file(tmp_path, value):
    path = tmp_path / "test_logits.parquet"
    table = logits()
    table.loc[2, "1"] = value
    table.to_parquet(path, index=False)
    with pytest.raises(DatasetError) as failure:
        WellTableDataset(filepath=str(path)).load()
    assert isinstance(failure.value.__cause__, WellTableError)
    assert f"{path}: 1 values are NaN or infinite, in 1 rows (e.g. id_code X-01_1_B04) and 1 columns (e.g. ['1'])" \
        in str(failure.value.__cause__)


def test_cached_table_contract():
    check_well_table(logits(), "ok.parquet")
    with pytest.raises(WellTableError, match="x.parquet: the first column must be id_code"):
        check_well_table(logits()[["0", "id_code"]], "x.parquet")
    with pytest.raises(WellTableError, match="id_code must be unique"):
        check_well_table(pd.concat([logits(), logits().head(1)], ignore_index=True), "x.parquet")
    with pytest.raises(WellTableError, match=r"1 columns are not float, e.g. 2 \(object\)"):
        check_well_table(logits().astype({"2": object}), "x.parquet")


def test_ensemble_members_load_from_a_folder_and_are_checked(tmp_path):
    from rxrx1_pipeline.kedro_io.datasets import LogitMembersDataset

    folder = tmp_path / "ensemble" / "test"
    assert LogitMembersDataset(path=str(folder)).load() == {}  # no folder: no ensemble
    folder.mkdir(parents=True)
    logits().to_parquet(folder / "seed1.parquet")
    logits().iloc[::-1].to_parquet(folder / "densenet.parquet")
    members = LogitMembersDataset(path=str(folder)).load()
    assert list(members) == ["densenet", "seed1"]
    broken = logits()
    broken.iloc[0, 1] = np.nan
    broken.to_parquet(folder / "broken.parquet")
    with pytest.raises(DatasetError, match="broken.parquet: 1 values are NaN"):  # kedro wraps the WellTableError
        LogitMembersDataset(path=str(folder)).load()
    with pytest.raises(DatasetError, match="copied in by hand"):
        LogitMembersDataset(path=str(folder)).save({})
