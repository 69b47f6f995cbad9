"""Shared fixtures: the project root and throw-away copies of the project for kedro runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # /work/shared next to the checkout, when present
KEDRO = Path(sys.executable).with_name("kedro")

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the project (conf, src, pyproject) with an empty data/ tree, so runs leave the repo alone."""
    dst = tmp_path / "project"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(
        "data", ".git", ".venv", "__pycache__", "*.egg-info", ".viz", "build", "tests", "notebooks"))
    for sub in ("01_raw", "02_intermediate"):
        (dst / "data" / sub).mkdir(parents=True)
    return dst


def kedro_run(project: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`kedro run ARGS` in ``project`` as a subprocess, telemetry off; output captured as text."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "200"}
    return subprocess.run([str(KEDRO), "run", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)
