"""`kedro run --pipelines=full` end to end on a tiny synthetic dataset, then `postprocess` alone."""

from pathlib import Path

import pandas as pd
import yaml

from tests.conftest import kedro_run

TINY_SYNTHETIC = {"image_size": 16, "experiments": {"train": 3, "test": 1}, "sirnas_per_group": 4,
                  "positive_controls": 1, "missing_well_rate": 0.05}
TINY_MODEL = {"image_size": 16, "embedding_dim": 16, "epochs": 2, "batch_size": 32, "tta": 2,
              "validate_every": 0, "num_workers": 0}


def _shrink(project: Path) -> None:
    """Rewrite the copy's parameters for a tiny, fast run."""
    conf = project / "conf" / "base"
    synthetic = yaml.safe_load((conf / "parameters_synthetic.yml").read_text())
    synthetic["synthetic"].update(TINY_SYNTHETIC)
    (conf / "parameters_synthetic.yml").write_text(yaml.safe_dump(synthetic))
    train = yaml.safe_load((conf / "parameters_train.yml").read_text())
    for key, block in train.items():
        if not key.startswith("_"):
            block["model"] = {**block["model"], **TINY_MODEL}
    (conf / "parameters_train.yml").write_text(yaml.safe_dump(train))


def test_full_pipeline_then_postprocess(project_copy: Path):
    _shrink(project_copy)
    for args in (["--pipelines=synthetic"], ["--pipelines=full"]):
        result = kedro_run(project_copy, *args, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    data = project_copy / "data"
    wells = pd.read_parquet(data / "02_intermediate/wells.parquet")
    test_wells = wells[(wells["split"] == "test") & (wells["well_type"] == "treatment")]
    submission = pd.read_csv(data / "08_reporting/submission.csv")
    assert list(submission.columns) == ["id_code", "sirna"]
    assert sorted(submission["id_code"]) == sorted(test_wells["id_code"])
    for cell_line in ("HEPG2", "HUVEC", "RPE", "U2OS"):
        history = pd.read_parquet(data / f"08_reporting/{cell_line}/history.parquet")
        assert list(history["epoch"]) == [1, 2]
        assert (data / f"06_models/{cell_line}/model.pt").is_file()
        assert "fit loss" in (data / f"08_reporting/{cell_line}/training_curves.json").read_text()
    metrics = pd.read_parquet(data / "08_reporting/postprocess_metrics.parquet")
    assert set(metrics["level"]) == {"experiment", "cell_line", "overall"}
    assert "assigned" in (data / "08_reporting/postprocess_accuracy.json").read_text()
    logits = pd.read_parquet(data / "07_model_output/test_logits.parquet")
    assert len(logits) == len(test_wells) and logits.shape[1] == 1 + 4 * 4

    again = kedro_run(project_copy, "--pipelines=postprocess")
    assert again.returncode == 0, again.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(data / "08_reporting/submission.csv"), submission)
