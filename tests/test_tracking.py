"""Experiment tracking: which metrics a saved dataset carries, and what TrackRun logs to an MLflow run."""

from pathlib import Path

import pandas as pd
import pytest

from rxrx1_pipeline.hooks import TrackRun, runner_name, tracked_metrics


def _history() -> pd.DataFrame:
    return pd.DataFrame({"epoch": [1, 2, 3], "loss": [3.0, 2.0, 1.5],
                         "valid_site_accuracy": [float("nan"), float("nan"), 0.4]})


def _stage_table() -> pd.DataFrame:
    return pd.DataFrame({"level": ["cell_line", "overall", "experiment"], "name": ["RPE", "all", "RPE-04"],
                         "experiments": [1, 1, 1], "wells": [10, 10, 10], "raw": [0.3, 0.3, 0.3],
                         "masked": [0.5, 0.5, 0.5], "assigned": [0.9, 0.9, 0.9], "layout_correct": [1.0, 1.0, 1.0]})


def test_history_becomes_one_curve_per_column_with_epochs_as_steps():
    metrics = tracked_metrics("RPE.history", _history())
    assert metrics["RPE.loss"] == [(1, 3.0), (2, 2.0), (3, 1.5)]
    assert metrics["RPE.valid_site_accuracy"] == [(3, 0.4)]  # epochs without validation are skipped
    assert set(metrics) == {"RPE.loss", "RPE.valid_site_accuracy"}


def test_the_shared_models_curves_are_tracked_and_the_runner_tag_is_readable():
    assert set(tracked_metrics("shared_history", _history())) == {"shared.loss", "shared.valid_site_accuracy"}
    assert runner_name("<kedro.runner.sequential_runner.SequentialRunner object at 0x7f3a>") == "SequentialRunner"
    assert runner_name("ThreadRunner") == "ThreadRunner"


def test_stage_table_gives_cell_line_and_overall_metrics_only():
    metrics = tracked_metrics("postprocess_metrics", _stage_table())
    assert metrics["valid.all.assigned"] == [(0, 0.9)] and metrics["valid.RPE.raw"] == [(0, 0.3)]
    assert len(metrics) == 2 * 4 and not any("RPE-04" in key for key in metrics)
    assert tracked_metrics("wells", _stage_table()) == {}


def test_track_run_logs_into_the_active_run_and_is_silent_without_one(tmp_path: Path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    hook = TrackRun()
    hook.after_dataset_saved("RPE.history", _history())  # no active run: nothing happens, nothing is created
    assert list(tmp_path.iterdir()) == []

    submission = tmp_path / "submission.csv"
    submission.write_text("id_code,sirna\nRPE-04_1_B02,3\n")

    class Catalog(dict):
        pass

    catalog = Catalog(submission=type("Dataset", (), {"_filepath": submission})())
    hook.after_catalog_created(catalog)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.set_experiment("tracking_test")  # a Kedro session earlier in this process may have set another
        with mlflow.start_run() as run:
            hook.after_dataset_saved("RPE.history", _history())
            hook.after_dataset_saved("submission", pd.read_csv(submission))
        client = mlflow.MlflowClient()
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "RPE.loss")] == [
            (1, 3.0), (2, 2.0), (3, 1.5)]
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["submission.csv"]
    finally:
        mlflow.set_tracking_uri(None)


def test_a_run_records_the_commit_and_whether_the_tree_had_changes(tmp_path):
    import subprocess

    from rxrx1_pipeline.runs.tracking import source_version

    assert source_version(tmp_path) == {"commit": "unknown", "dirty": None}
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert source_version(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_version(tmp_path) == {"commit": head, "dirty": True}
