"""End to end: `kedro run` of synthetic then ingest in a copy of the project; every catalog entry persisted."""

from pathlib import Path

import numpy as np
import pandas as pd
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import MemoryDataset

from rxrx1_pipeline.datasets import read_site
from rxrx1_pipeline.pipelines.synthetic.nodes import render_sites
from tests.conftest import ROOT, kedro_run

TINY = dict(image_size=16, cell_lines=["HEPG2"], experiments={"train": 2, "test": 1}, sirnas_per_group=3,
            positive_controls=2, missing_well_rate=0.1)
# kedro --params is an OmegaConf dot list split on commas, so a list can hold one element only.
TINY_PARAMS = ("synthetic.image_size=16,synthetic.cell_lines=[HEPG2],synthetic.experiments.train=2,"
               "synthetic.experiments.test=1,synthetic.sirnas_per_group=3,synthetic.positive_controls=2,"
               "synthetic.missing_well_rate=0.1")


def test_synthetic_then_ingest_cli(project_copy: Path):
    res = kedro_run(project_copy, "--pipelines=synthetic", f"--params={TINY_PARAMS}")
    assert res.returncode == 0, res.stderr[-3000:]
    res = kedro_run(project_copy, "--pipelines=ingest")
    assert res.returncode == 0, res.stderr[-3000:]

    raw = project_copy / "data/01_raw/synthetic"
    csvs = {f: pd.read_csv(raw / f"{f}.csv") for f in ("train", "test", "train_controls", "test_controls")}
    wells = pd.read_parquet(project_copy / "data/02_intermediate/wells.parquet")
    sites = pd.read_parquet(project_copy / "data/02_intermediate/sites.parquet")
    truth = pd.read_parquet(project_copy / "data/01_raw/synthetic_truth.parquet")
    classes = pd.read_parquet(project_copy / "data/02_intermediate/classes.parquet")

    assert len(wells) == sum(map(len, csvs.values())) == len(truth)
    assert set(wells["id_code"]) == set(truth["id_code"])
    assert set(wells["cell_line"]) == {"HEPG2"}
    assert wells["experiment"].nunique() == 3
    assert (wells.groupby(["experiment", "plate"]).size() <= 3 + 2 + 1).all()
    assert len(sites) == 2 * len(wells)
    train_ids = set(wells.loc[wells["split"] == "train", "sirna"].astype(int))
    assert classes["sirna"].tolist() == sorted(train_ids) and len(train_ids) == 4 * 3 + 2 + 1

    # the PNG tree and sites.parquet agree both ways
    on_disk = {str(p.relative_to(raw)) for p in raw.rglob("*.png")}
    listed = set(sites[[f"w{c}" for c in range(1, 7)]].to_numpy().ravel())
    assert on_disk == listed

    # a PNG site reads back exactly as rendered in this process
    row = sites.iloc[len(sites) // 2]
    prefix = row["w1"][: -len("_w1.png")]
    image = read_site(raw, prefix)
    assert image.shape == (6, 16, 16) and image.dtype == np.uint8
    params = {**_default_synthetic_params(), **TINY}
    np.testing.assert_array_equal(image, render_sites(truth, params)[prefix]())


def _default_synthetic_params() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "conf/base/parameters_synthetic.yml").read_text())["synthetic"]


def test_every_pipeline_dataset_is_persisted():
    bootstrap_project(ROOT)
    from kedro.framework.project import pipelines

    with KedroSession.create(project_path=ROOT) as session:
        catalog = session.load_context().catalog
    assert {"synthetic", "ingest", "full"} <= set(pipelines)
    not_persisted: dict[str, set[str]] = {}  # dataset -> pipelines using it
    for name, pipe in pipelines.items():
        for ds in pipe.datasets():
            if ds.startswith("params:") or ds == "parameters":
                continue
            if isinstance(catalog.get(ds, fallback_to_runtime_pattern=True), MemoryDataset):
                not_persisted.setdefault(ds, set()).add(name)
    assert not not_persisted, "datasets with no catalog entry (would be MemoryDatasets): " + "; ".join(
        f"{ds} (in {', '.join(sorted(p))})" for ds, p in sorted(not_persisted.items()))
