"""One writer at a time: a second run on an output root is refused naming the first, a dead run's lock is
taken over, and temporary files carry their writer's pid so nobody removes a live process's partial file."""

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from kedro_datasets.pandas import ParquetDataset

from rxrx1_pipeline.kedro_io.catalog import atomic_target
from rxrx1_pipeline.hooks import OneRunPerOutputRoot
from rxrx1_pipeline.runs.locks import RUN_LOCK, FileLock, LockError, sweep_partials, write_atomically

HOLDER = """import sys, time
from rxrx1_pipeline.runs.locks import FileLock
FileLock(sys.argv[1], "test").acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path):
    """Start a process that holds the lock file given to it; yields (start(lock) -> Popen)."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    procs = []

    def start(lock: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        proc = subprocess.Popen([sys.executable, str(script), str(lock)], stdout=subprocess.PIPE, text=True, env=env)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_lock_is_refused_naming_its_holder_then_taken_over_once_it_died(holder, tmp_path, caplog):
    lock = tmp_path / "out" / RUN_LOCK
    proc = holder(lock)
    with pytest.raises(LockError) as refused:
        FileLock(lock, "output root out").acquire()
    message = str(refused.value)
    assert message.startswith(f"output root out is in use by another run: pid {proc.pid}, started 20")
    assert f"command `holder.py {lock}`. Wait for it to finish or stop it" in message
    assert message.endswith(f"(lock file {lock})")

    proc.kill()  # kill -9: the kernel drops the lock, the file with its details stays
    proc.wait()
    assert lock.is_file()
    with caplog.at_level(logging.WARNING), FileLock(lock, "output root out"):
        assert f'"pid": {os.getpid()}' in lock.read_text()
    assert (f"Taking over the lock of output root out from a run that is no longer running: pid {proc.pid}"
            in caplog.text)
    assert not lock.exists()  # released: removed


def test_a_run_killed_with_its_lock_gets_its_mlflow_run_marked_killed_by_the_next(holder, tmp_path, caplog):
    """kill -9 (the OOM killer) runs no exit handler: the MLflow run stays RUNNING. The run hook writes the run's
    id into the lock file; the next run, taking the dead run's lock over, marks that MLflow run KILLED."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    dead_run = client.create_run(client.create_experiment("x")).info.run_id
    project, loader = tmp_path / "project", Loader(globals={"output_root": "data"})
    lock = project / "data" / RUN_LOCK
    hook = OneRunPerOutputRoot()
    hook.after_context_created(SimpleNamespace(project_path=project, config_loader=loader))
    hook.before_pipeline_run({}, None, None)
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=dead_run):
            hook.before_node_run()  # the first node: the run's id goes into the lock file
            assert dead_run in lock.read_text()
        client.update_run(dead_run, "RUNNING")  # as a killed process leaves it
        noted = lock.read_text()
        held = hook._locks[0]  # the process dies: its lock goes, the file stays
        os.close(held._fd)
        held._fd = None
        from rxrx1_pipeline.runs.locks import _HELD

        _HELD.clear()
        lock.write_text(noted.replace(f'"pid": {os.getpid()}', f'"pid": {dead_pid()}'))
        with caplog.at_level(logging.WARNING):
            OneRunPerOutputRoot.__init__(hook)
            hook.after_context_created(SimpleNamespace(project_path=project, config_loader=loader))
            hook.before_pipeline_run({}, None, None)
        assert client.get_run(dead_run).info.status == "KILLED"
        assert f"died without closing: its MLflow run {dead_run}, left RUNNING, is marked KILLED" in caplog.text
        hook.after_pipeline_run({}, None, None, None)
    finally:
        mlflow.set_tracking_uri(None)


def test_the_same_process_cannot_take_its_own_lock_twice(tmp_path):
    with FileLock(tmp_path / "x.lock", "output root x"):
        with pytest.raises(LockError, match=r"^output root x is already in use by this process \(pid "):
            FileLock(tmp_path / "x.lock", "output root x").acquire()


class Loader(dict):
    """The config loader as the hook reads it: ``loader["globals"]``."""

    config_patterns = {"globals": ["globals*"]}


def test_the_run_hook_locks_output_root_and_outside_image_store(holder, tmp_path):
    project = tmp_path / "project"
    loader = Loader(globals={"output_root": "data/run", "image_store_root": str(tmp_path / "fast_disk")})
    hook = OneRunPerOutputRoot()
    hook.after_context_created(SimpleNamespace(project_path=project, config_loader=loader))
    hook.before_pipeline_run({}, None, None)
    assert (project / "data/run" / RUN_LOCK).is_file() and (tmp_path / "fast_disk" / RUN_LOCK).is_file()
    hook.after_pipeline_run({}, None, None, None)
    assert not (project / "data/run" / RUN_LOCK).exists() and not (tmp_path / "fast_disk" / RUN_LOCK).exists()

    proc = holder(tmp_path / "fast_disk" / RUN_LOCK)  # another project's run on the same image store
    with pytest.raises(LockError, match=rf"^output root {tmp_path / 'fast_disk'} is in use by another run: "
                                        rf"pid {proc.pid}"):
        hook.before_pipeline_run({}, None, None)
    assert not (project / "data/run" / RUN_LOCK).exists()  # the lock it had taken is given back


def test_only_partial_files_of_dead_writers_are_swept(tmp_path):
    live, gone = os.getpid(), dead_pid()
    for pid in (live, gone):
        (tmp_path / f".wells.parquet.{pid}.abcd1234.partial").write_text("x")
    (tmp_path / ".wells.parquet.notapid.partial").write_text("x")
    sweep_partials(tmp_path, ".wells.parquet.", ".partial")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".wells.parquet.{live}.abcd1234.partial",
                                                         ".wells.parquet.notapid.partial"]


def test_atomic_save_uses_its_own_temporary_and_leaves_a_live_writers_alone(tmp_path, holder):
    other = holder(tmp_path / "other.lock")  # any live process other than this one
    target = tmp_path / "wells.parquet"
    theirs = tmp_path / f".wells.parquet.{other.pid}.00000000.partial"
    theirs.write_text("another run's half-written file")
    stale = tmp_path / f".wells.parquet.{dead_pid()}.11111111.partial"
    stale.write_text("a killed run's")
    dataset = ParquetDataset(filepath=str(target))
    seen = []
    with atomic_target(dataset):
        seen.append(Path(str(dataset._filepath)).name)
        dataset.save(pd.DataFrame({"a": [1]}))
    assert seen[0].startswith(f".wells.parquet.{os.getpid()}.") and seen[0].endswith(".partial")
    assert pd.read_parquet(target)["a"].tolist() == [1]
    assert theirs.read_text() == "another run's half-written file" and not stale.exists()


def test_atomic_file_write_uses_a_unique_temporary_and_removes_it_on_failure(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("old")
    names = []

    def fail(tmp: Path) -> None:
        names.append(tmp.name)
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(target, fail)
    assert target.read_text() == "old"
    write_atomically(target, lambda tmp: names.append(tmp.name) or tmp.write_text("new"))
    assert names[0] != names[1] and all(n.startswith(f".model.pt.{os.getpid()}.") for n in names)
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_runs_on_several_machines_share_the_output_root():
    from kedro.pipeline import Node, Pipeline

    from rxrx1_pipeline.hooks import several_machines
    from tests.pipelines.conftest import TINY_TRAINING, changed

    pipe = Pipeline([Node(lambda training: 1, "params:HEPG2.training", "x", name="train")])

    class Catalog(dict):
        def load(self, name):
            return self[name]

    two = changed(TINY_TRAINING, {"distributed": {"nnodes": 2, "rdzv_endpoint": "10.0.0.1:29400"}})
    assert not several_machines(Catalog({"params:HEPG2.training": TINY_TRAINING}), pipe)
    assert several_machines(Catalog({"params:HEPG2.training": two}), pipe)
