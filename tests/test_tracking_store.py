"""The MLflow store is checked before a run (errors name the file and the setting), a copied project logs into
its own artifact folder, a tracking error after the start does not fail the run, and a SIGTERM'd run is KILLED."""

import logging
import sqlite3
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from kedro.framework.hooks import hook_impl
from kedro.framework.hooks.manager import _create_hook_manager

from rxrx1_pipeline.runs.tracking import (
    CheckTrackingStore,
    MarkInterruptedRuns,
    TrackingCannotFailRuns,
    TrackingStoreError,
    check_sqlite_store,
)

SETTING = r"point server\.mlflow_tracking_uri in conf/base/mlflow\.yml \(or conf/local/mlflow\.yml\) at another file"


def make_store(db: Path, artifact_location: str, runs: tuple[str, ...] = ()) -> None:
    """A SQLite file with the two MLflow tables the check reads (experiments, runs)."""
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT, artifact_location TEXT)")
        con.execute("CREATE TABLE runs (run_uuid TEXT, experiment_id INTEGER, artifact_uri TEXT)")
        con.execute("INSERT INTO experiments VALUES (1, 'synthetic', ?)", (artifact_location,))
        for i, uri in enumerate(runs):
            con.execute("INSERT INTO runs VALUES (?, 1, ?)", (f"run{i}", uri))


class Loader(dict):
    config_patterns: dict = {}


def context(project: Path, uri: str = "sqlite:///mlflow.db") -> SimpleNamespace:
    loader = Loader(mlflow={"server": {"mlflow_tracking_uri": uri},
                            "tracking": {"experiment": {"name": "synthetic"}}})
    return SimpleNamespace(project_path=project, config_loader=loader, env=None, _package_name="rxrx1_pipeline")


def test_a_corrupt_store_is_refused_naming_the_file_and_the_setting(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40)
    where = "conf/base/mlflow.yml (or conf/local/mlflow.yml)"
    with pytest.raises(TrackingStoreError, match=rf"^MLflow tracking store {db} cannot be used \(DatabaseError: "
                                                 rf".*\); move it aside to start a new store .*{SETTING}$"):
        check_sqlite_store(db, "synthetic", where)
    db.unlink()
    db.mkdir()
    with pytest.raises(TrackingStoreError, match=rf"^MLflow tracking store {db} is not a file; "):
        check_sqlite_store(db, "synthetic", where)


def test_an_artifact_folder_that_cannot_be_written_is_refused_before_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_store(tmp_path / "mlflow.db", str(tmp_path / "mlruns/1"))
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns/1").write_text("a file where the experiment's folder should be")
    with pytest.raises(TrackingStoreError, match=rf"^MLflow artifact folder of experiment 'synthetic' "
                                                 rf"{tmp_path / 'mlruns/1'} is not a writable folder .*tracking\."
                                                 r"experiment\.name"):
        CheckTrackingStore().after_context_created(context(tmp_path))


def test_a_copied_project_logs_into_its_own_artifact_folder(tmp_path, monkeypatch, caplog):
    original, copy = tmp_path / "original", tmp_path / "copy"
    copy.mkdir()
    monkeypatch.chdir(copy)
    old = original / "mlruns/1"
    make_store(copy / "mlflow.db", str(old), runs=(f"{old}/run0/artifacts", f"{old.as_uri()}/run1/artifacts",
                                                   "s3://bucket/run2/artifacts"))
    with caplog.at_level(logging.WARNING):
        CheckTrackingStore().after_context_created(context(copy))
    with sqlite3.connect(copy / "mlflow.db") as con:
        assert con.execute("SELECT artifact_location FROM experiments").fetchone()[0] == str(copy / "mlruns/1")
        assert [r[0] for r in con.execute("SELECT artifact_uri FROM runs ORDER BY run_uuid")] == [
            f"{copy}/mlruns/1/run0/artifacts", f"{copy}/mlruns/1/run1/artifacts", "s3://bucket/run2/artifacts"]
    assert (f"MLflow experiment 'synthetic' kept its artifacts in {old}, outside this project ({copy} was copied "
            f"or moved); it now logs into {copy / 'mlruns/1'} (2 earlier runs repointed)") in caplog.text
    assert not old.exists()


def test_an_unreachable_tracking_server_is_refused(tmp_path):
    with pytest.raises(TrackingStoreError, match=r"^MLflow tracking server http://127\.0\.0\.1:9/ is not reachable "
                                                 r".*change server\.mlflow_tracking_uri in conf/base/mlflow\.yml"):
        CheckTrackingStore().after_context_created(context(tmp_path, "http://127.0.0.1:9/"))


class Logger:
    """Hooks that fail: ``tracked`` like MLflow code (its frame's module is ``mlflow.fake``), ``other`` not."""

    def __init__(self, where: str):
        namespace = {"__name__": f"{where}.fake"}
        exec(textwrap.dedent("""
            def log(name):
                raise PermissionError(13, "Permission denied", "mlruns/1/abc/artifacts/" + name)
        """), namespace)
        self._log = namespace["log"]

    @hook_impl
    def after_dataset_saved(self, dataset_name, data, node):
        self._log(dataset_name)


class FakeMlflow:
    """What the tracking hooks call of mlflow: the active run, end_run(status), MlflowClient().set_terminated."""

    def __init__(self, run_id: str = "r0"):
        self.ended, self.terminated, self.run_id = [], [], run_id

    def active_run(self):
        return None if self.ended else SimpleNamespace(info=SimpleNamespace(run_id=self.run_id))

    def end_run(self, status):
        self.ended.append(status)

    def MlflowClient(self):  # noqa: N802 (mlflow's name)
        return SimpleNamespace(set_terminated=lambda run_id, status: self.terminated.append((run_id, status)))


def test_a_tracking_error_after_the_start_is_logged_and_the_run_goes_on(caplog, monkeypatch):
    manager = _create_hook_manager()
    guard = TrackingCannotFailRuns()
    manager.register(guard)
    manager.register(Logger("mlflow"))
    with caplog.at_level(logging.ERROR):
        manager.hook.after_dataset_saved(dataset_name="submission", data=None, node=None)
        manager.hook.after_pipeline_run(run_params={}, run_result={}, pipeline=None, catalog=None)
    assert guard.failures == ["after saving submission: PermissionError: [Errno 13] Permission denied: "
                              "'mlruns/1/abc/artifacts/submission'"]
    assert "The run's outputs are complete, but tracking failed 1 time(s); the MLflow run was not opened" in caplog.text

    opened = _create_hook_manager()
    guard = TrackingCannotFailRuns()
    opened.register(guard)
    opened.register(Logger("mlflow"))
    fake = FakeMlflow(run_id="r1")
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    opened.hook.before_pipeline_run(run_params={}, pipeline=None, catalog=None)  # kedro-mlflow has opened run r1
    opened.hook.after_dataset_saved(dataset_name="report", data=None, node=None)
    opened.hook.after_pipeline_run(run_params={}, run_result={}, pipeline=None, catalog=None)
    assert fake.ended == ["FAILED"] and fake.terminated == [("r1", "FAILED")]
    assert "the MLflow run r1 is marked FAILED. First: after saving report: PermissionError" in caplog.text

    other = _create_hook_manager()
    other.register(TrackingCannotFailRuns())
    other.register(Logger("rxrx1_pipeline"))
    with pytest.raises(PermissionError):  # not tracking code: raised as usual
        other.hook.after_dataset_saved(dataset_name="submission", data=None, node=None)


def test_a_sigtermed_run_is_marked_killed_and_exits_143(monkeypatch, caplog):
    """The handler turns SIGTERM into SystemExit(143); at exit the MLflow run ends as KILLED (the real thing, with
    MLflow's own exit handler, is a case of benchmarks/faults.py)."""
    import os
    import signal

    fake = FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    hook = MarkInterruptedRuns()
    before = signal.getsignal(signal.SIGTERM)
    hook.before_pipeline_run({}, None, None)
    try:
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between bytecodes
                pass
        assert stopped.value.code == 143
        assert signal.getsignal(signal.SIGTERM) is before  # restored: a second signal acts as usual
        hook._mark_killed()  # what the exit handler does
        assert fake.ended == ["KILLED"]
        assert "Received SIGTERM: stopping the run; its MLflow run is marked KILLED" in caplog.text
    finally:
        hook.on_pipeline_error(None, {}, None, None)
        signal.signal(signal.SIGTERM, before)


def test_a_run_that_ends_normally_is_left_to_kedro_mlflow(monkeypatch):
    fake = FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    hook = MarkInterruptedRuns()
    hook.before_pipeline_run({}, None, None)
    hook.after_pipeline_run({}, None, None, None)
    hook._mark_killed()
    assert fake.ended == []
