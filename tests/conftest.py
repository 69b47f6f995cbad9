"""Shared fixtures: the project root, the real metadata when present, and throw-away project copies."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # /work/shared next to the checkout, when present
REAL_METADATA = SHARED / "rxrx1" / "metadata"
CSVS = ("train.csv", "test.csv", "train_controls.csv", "test_controls.csv")
KEDRO = Path(sys.executable).with_name("kedro")

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def real_metadata() -> Path:
    """The folder of the four real RxRx1 CSVs; the test is skipped where it is absent (a user's clone)."""
    if not all((REAL_METADATA / f).is_file() for f in CSVS):
        pytest.skip(f"real RxRx1 metadata not found in {REAL_METADATA}")
    return REAL_METADATA


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the project (conf, src, pyproject) with an empty data/ tree, so runs leave the repo alone."""
    from tests.tiny_project import copy_project

    return copy_project(tmp_path / "project")


def kedro_run(project: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`kedro run ARGS` in ``project`` as a subprocess, telemetry off; output captured as text."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "200"}
    return subprocess.run([str(KEDRO), "run", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)


def session_run(project: Path, pipeline: str, runtime_params: dict | None = None) -> dict:
    """Run a registered pipeline in this process with ``project``'s conf (a KedroSession, as `kedro run`)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with contextlib.chdir(project), KedroSession.create(project_path=project,
                                                         runtime_params=runtime_params or {}) as session:
        return session.run(pipeline_names=[pipeline])  # from the project folder, as `kedro run` (mlflow.db)
