"""`kedro run --pipelines=postprocess` on simulated cached logits in a temporary project copy."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from rxrx1_pipeline.pipelines.plate_groups.nodes import (
    assign_train_plate_groups,
    discover_sirna_groups,
    tabulate_plate_layouts,
)
from tests.pipelines.plate_groups.builders import make_wells

from .test_nodes import simulated_logits

ROOT = Path(__file__).resolve().parents[3]


def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    return subprocess.run([str(Path(sys.executable).with_name("kedro")), "run", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_postprocess_reruns_from_cached_logits(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns("data", ".git", ".venv", "__pycache__",
                                                                 "*.egg-info", ".viz", ".pytest_cache"))
    wells, _, truth = make_wells(per_group=10, missing=("HUVEC-03_4_B07",), seed=5)
    groups = discover_sirna_groups(wells)
    train_pg = assign_train_plate_groups(wells, groups)
    valid = wells[wells["experiment"].isin(["HEPG2-01", "HUVEC-01"])]
    tables = {
        "02_intermediate/wells": wells, "03_primary/sirna_groups": groups,
        "03_primary/train_plate_groups": train_pg, "03_primary/plate_layouts": tabulate_plate_layouts(train_pg),
        "07_model_output/valid_logits": simulated_logits(valid, truth, "train", strength=2.5, seed=1),
        "07_model_output/test_logits": simulated_logits(wells, truth, "test", strength=2.5, seed=2),
    }
    for rel, df in tables.items():
        path = project / "data" / f"{rel}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(path, index=False)

    submissions = []
    for _ in range(2):
        result = _kedro(project, "--pipelines=postprocess")
        assert result.returncode == 0, result.stderr[-3000:]
        submissions.append(pd.read_csv(project / "data/08_reporting/submission.csv"))
    assert "Validation accuracy" in result.stderr and "Pipeline execution completed" in result.stderr

    test_ids = wells.loc[(wells["split"] == "test") & (wells["well_type"] == "treatment"), "id_code"]
    sub = submissions[0]
    assert sub.columns.tolist() == ["id_code", "sirna"]
    assert sorted(sub["id_code"]) == sorted(test_ids) and sub["id_code"].is_unique
    pd.testing.assert_frame_equal(submissions[0], submissions[1])
    metrics = pd.read_parquet(project / "data/08_reporting/postprocess_metrics.parquet")
    assert metrics.loc[metrics["level"] == "overall", "layout_correct"].item() == 1.0
    for split in ("valid", "test"):
        assert (project / f"data/07_model_output/{split}_plate_groups.parquet").is_file()
        assert (project / f"data/07_model_output/{split}_predictions.parquet").is_file()
