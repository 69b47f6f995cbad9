"""Throw-away copies of this project shrunk to a tiny synthetic run: the fixture of the end-to-end tests
and of ``benchmarks/faults.py`` and ``benchmarks/gpu_check.py``; development only (not installed)."""

import shutil
from pathlib import Path

import yaml

from rxrx1_pipeline.schema import SharedTraining

ROOT = Path(__file__).resolve().parents[1]
TINY_SYNTHETIC = {"image_size": 16, "experiments": {"train": 3, "test": 1}, "sirnas_per_group": 4,
                  "positive_controls": 1, "missing_well_rate": 0.05}
TINY_TRAINING = {"image_size": 16, "embedding_dim": 16, "epochs": 2, "batch_size": 32, "validate_every": 0}


def copy_project(dst: Path) -> Path:
    """A copy of the project (conf, src, pyproject) at ``dst`` with an empty data/ tree (runs leave the repo alone)."""
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(
        "data", ".git", ".venv", "__pycache__", "*.egg-info", ".viz", "build", "tests", "notebooks", "benchmarks",
        "mlflow.db", "mlruns"))
    for sub in ("01_raw", "02_intermediate"):
        (dst / "data" / sub).mkdir(parents=True)
    return dst


def shrink_project(project: Path) -> dict:
    """Rewrite a project copy's parameters for a tiny, fast run (TINY_SYNTHETIC, TINY_TRAINING for every
    cell line and the shared model when it is trained); returns the synthetic parameters."""
    conf = project / "conf" / "base"
    synthetic = yaml.safe_load((conf / "parameters_synthetic.yml").read_text())
    synthetic["synthetic"].update(TINY_SYNTHETIC)
    (conf / "parameters_synthetic.yml").write_text(yaml.safe_dump(synthetic))
    train = yaml.safe_load((conf / "parameters_train.yml").read_text())
    for key, block in train.items():
        if key == "shared_training":
            block.update(TINY_TRAINING if SharedTraining.model_validate(block).epochs else {})
        elif not key.startswith("_"):
            block["training"] = {**block["training"], **TINY_TRAINING}
    (conf / "parameters_train.yml").write_text(yaml.safe_dump(train))
    return synthetic["synthetic"]
