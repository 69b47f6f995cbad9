"""Experiment tracking that cannot break a run: the MLflow store is checked before a run starts, a tracking
failure after the nodes have started is reported without failing a run whose outputs are complete, and an
interrupted run is marked KILLED in MLflow instead of staying RUNNING.

Three hooks beside kedro-mlflow's own (which opens and closes one MLflow run per ``kedro run``):

- :class:`CheckTrackingStore` (first thing after the context exists, before kedro-mlflow touches the store): a
  relative SQLite file (``sqlite:///mlflow.db``) is taken from the project folder, not from wherever Python
  started (a notebook's folder, a script's); the SQLite file of ``server.mlflow_tracking_uri`` must be a
  readable, writable, sound database in a writable folder, the experiment's artifact folder writable, a server
  URI reachable; each error names the file or address and the setting to change. An experiment whose artifact
  folder lies outside the project (the project was copied or moved with its ``mlflow.db``) is pointed at the
  project's own ``mlruns/``.
- :class:`TrackingCannotFailRuns`: wraps the hooks that log during and after the run; an error raised by
  MLflow code there is logged, collected and summarised at the end, and the run goes on.
- :class:`MarkInterruptedRuns`: on SIGTERM, SIGHUP or Ctrl-C during a run, the MLflow run is ended as KILLED.

``mlflow`` is imported only where a run is being tracked (never at module import).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

from kedro.framework.hooks import hook_impl

log = logging.getLogger(__name__)

SETTING = "server.mlflow_tracking_uri"


class TrackingStoreError(RuntimeError):
    """The MLflow tracking store cannot be used; the message names the file (or address) and the setting."""


def _mlflow_config(context) -> dict:
    loader = context.config_loader
    if "mlflow" not in loader.config_patterns:
        loader.config_patterns.update({"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]})
    try:
        return dict(loader["mlflow"] or {})
    except Exception:  # no mlflow.yml: kedro-mlflow's defaults (a file store in mlruns/)
        return {}


def _probe_folder(folder: Path, what: str, fix: str) -> None:
    """``folder`` exists (or can be created) and a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = f"{type(exc).__name__}: {exc.strerror or exc}"
        raise TrackingStoreError(f"{what} {folder} is not a writable folder ({reason}); {fix}") from None


class CheckTrackingStore:
    """Checks the MLflow store before kedro-mlflow opens it (see the module docstring)."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        config = _mlflow_config(context)
        project = Path(context.project_path).absolute()
        env = getattr(context, "env", None) or "local"
        where = f"conf/base/mlflow.yml (or conf/{env}/mlflow.yml)"
        uri = (config.get("server") or {}).get("mlflow_tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI",
                                                                                        "mlruns")
        if config:  # kedro-mlflow (and `kedro mlflow ui`) read this config next: the store is the project's
            uri = project_store_uri(uri, project)
            context.config_loader["mlflow"] = {**config, "server": {**(config.get("server") or {}),
                                                                    "mlflow_tracking_uri": uri}}
        tracking = config.get("tracking") or {}
        experiment = (tracking.get("experiment") or {}).get("name") or context._package_name
        configured_location = ((tracking.get("experiment") or {}).get("create_experiment_kwargs") or {}
                               ).get("artifact_location")
        parsed = urlparse(uri)
        if parsed.scheme == "sqlite":
            db = _sqlite_file(uri)
            db = db if db.is_absolute() else project / db
            location = check_sqlite_store(db, experiment, where)
            if location is not None and configured_location is None:
                location = relocate_artifacts(db, experiment, location, project)
            artifacts = _local_path(location) if location is not None else project / "mlruns"
            if artifacts is not None:
                _probe_folder(artifacts, f"MLflow artifact folder of experiment {experiment!r}",
                              f"make it writable, or track into another experiment ({where}: tracking.experiment."
                              "name, with tracking.experiment.create_experiment_kwargs.artifact_location)")
        elif parsed.scheme in ("http", "https"):
            check_server(uri, where)
        elif parsed.scheme in ("", "file"):
            folder = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)
            folder = folder if folder.is_absolute() else project / folder
            _probe_folder(folder, "MLflow tracking folder", f"make it writable or change {SETTING} in {where}")


def _sqlite_file(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI (relative for ``sqlite:///mlflow.db``)."""
    return Path(unquote(urlparse(uri).path).removeprefix("/"))


def project_store_uri(uri: str, project: Path) -> str:
    """``uri`` with a relative SQLite file taken from ``project`` instead of the current directory (MLflow reads
    ``sqlite:///mlflow.db`` from wherever Python started: a notebook's folder, a script's); other URIs unchanged
    (kedro-mlflow already resolves a relative folder against the project)."""
    if urlparse(uri).scheme != "sqlite" or _sqlite_file(uri).is_absolute():
        return uri
    return f"sqlite:///{(Path(project).absolute() / _sqlite_file(uri)).as_posix()}"


def use_project_store(project: Path | None = None, env: str | None = None) -> str:
    """Point MLflow at the tracking store of ``project`` (default: the checkout holding this package) as its conf
    sets it (``server.mlflow_tracking_uri``, ``env`` over base), for code outside a Kedro session such as loading
    a run's scoring model; returns the URI."""
    import mlflow
    from kedro.config import OmegaConfigLoader

    project = Path(project) if project is not None else Path(__file__).resolve().parents[3]
    if not (project / "conf" / "base").is_dir():
        raise TrackingStoreError(f"{project} holds no conf/base: pass the project folder, "
                                 "use_project_store(project=...)")
    loader = OmegaConfigLoader(str(project / "conf"), env=env, base_env="base", default_run_env="local",
                               config_patterns={"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]},
                               merge_strategy={"mlflow": "soft"})
    uri = ((loader["mlflow"] or {}).get("server") or {}).get("mlflow_tracking_uri") or "mlruns"
    uri = project_store_uri(uri, project) if urlparse(uri).scheme else (project / uri).absolute().as_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def check_sqlite_store(db: Path, experiment: str, where: str) -> str | None:
    """The SQLite file ``db`` is usable (or can be created); returns the artifact location stored for
    ``experiment``, or None when it is not recorded yet."""
    fix = (f"move it aside to start a new store (the runs it holds are then no longer listed), or point "
           f"{SETTING} in {where} at another file")
    if db.exists() and not db.is_file():
        raise TrackingStoreError(f"MLflow tracking store {db} is not a file; {fix}")
    _probe_folder(db.parent, "the folder of the MLflow tracking store",
                  f"SQLite writes its journal beside {db.name}; make it writable or change {SETTING} in {where}")
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=30) as con:
            verdict = con.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {verdict}")
            con.execute("BEGIN IMMEDIATE")  # takes the write lock: a read-only file or folder fails here
            con.execute("ROLLBACK")
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "experiments" not in tables:
                return None
            row = con.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
        return row[0] if row else None
    except sqlite3.Error as exc:
        raise TrackingStoreError(f"MLflow tracking store {db} cannot be used ({type(exc).__name__}: {exc}); "
                                 f"{fix}") from None


def _local_path(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(location) if parsed.scheme == "" else None  # a remote store is not probed


def relocate_artifacts(db: Path, experiment: str, location: str, project: Path) -> str:
    """Point an experiment whose local artifact folder lies outside ``project`` (a copied or moved project with
    its mlflow.db) at ``<project>/mlruns/<experiment id>``, and its runs' artifact paths likewise, so a copy
    never logs into the original's folder. Returns the experiment's artifact location."""
    old = _local_path(location)
    if old is None or old.is_relative_to(project):
        return location
    with sqlite3.connect(db, timeout=30) as con:
        exp_id = con.execute("SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)).fetchone()[0]
        new = project / "mlruns" / str(exp_id)
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (str(new), exp_id))
        moved = 0
        for prefix in {location, old.as_uri(), str(old)}:
            moved += con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE experiment_id = ? "
                                 "AND substr(artifact_uri, 1, ?) = ?",
                                 (str(new), len(prefix) + 1, exp_id, len(prefix), prefix)).rowcount
    log.warning("MLflow experiment %r kept its artifacts in %s, outside this project (%s was copied or moved); "
                "it now logs into %s (%d earlier runs repointed)", experiment, old, project, new, moved)
    return str(new)


def check_server(uri: str, where: str) -> None:
    parsed = urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=5).close()
    except OSError as exc:
        raise TrackingStoreError(f"MLflow tracking server {uri} is not reachable ({exc}); start it, or change "
                                 f"{SETTING} in {where}") from None


def _from_tracking(exc: BaseException) -> bool:
    """Whether an exception was raised by MLflow code (its traceback passes through mlflow or kedro_mlflow)."""
    while exc is not None:
        tb = exc.__traceback__
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__", "")
            if module.split(".")[0] in ("mlflow", "kedro_mlflow"):
                return True
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return False


class TrackingCannotFailRuns:
    """A tracking error during or after the run (logging a parameter, a metric, an artifact; closing the MLflow
    run) is logged and the run goes on: the outputs are what matters, and they are complete. The run ends with
    one error line listing what was not tracked; the MLflow run is marked FAILED when the store still answers.
    Errors of other code in the same hooks are raised as usual."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.run_id: str | None = None

    def _guard(self, where: str):
        try:
            return (yield)
        except Exception as exc:
            if not _from_tracking(exc):
                raise
            self.failures.append(f"{where}: {type(exc).__name__}: {exc}")
            log.error("Tracking failed (%s): %s: %s; the run goes on", where, type(exc).__name__, exc)
            return []

    @hook_impl(wrapper=True)
    def before_pipeline_run(self):
        self.failures, self.run_id = [], None
        result = yield  # a store that fails here fails the run before any node
        mlflow = sys.modules.get("mlflow")  # imported by kedro-mlflow when it tracks; never imported here
        run = mlflow.active_run() if mlflow is not None else None
        self.run_id = run.info.run_id if run is not None else None
        return result

    @hook_impl(wrapper=True)
    def before_node_run(self, node):
        return (yield from self._guard(f"before node {node.name}"))

    @hook_impl(wrapper=True)
    def after_node_run(self, node):
        return (yield from self._guard(f"after node {node.name}"))

    @hook_impl(wrapper=True)
    def after_dataset_saved(self, dataset_name):
        return (yield from self._guard(f"after saving {dataset_name}"))

    @hook_impl(wrapper=True)
    def on_pipeline_error(self):
        return (yield from self._guard("closing the failed run"))

    @hook_impl(wrapper=True)
    def after_pipeline_run(self):
        result = yield from self._guard("closing the run")
        if self.failures:
            status = _mark_failed(self.run_id)
            log.error("The run's outputs are complete, but tracking failed %d time(s); the MLflow run %s. First: %s. "
                      "Check the tracking store (conf mlflow.yml: server.mlflow_tracking_uri, the experiment's "
                      "artifact folder)", len(self.failures), status, self.failures[0])
        return result


def _mark_failed(run_id: str | None) -> str:
    """End this run's MLflow run ``run_id`` as FAILED if the store still answers; says what happened."""
    if run_id is None:
        return "was not opened"
    try:
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run("FAILED")
        mlflow.MlflowClient().set_terminated(run_id, "FAILED")
        return f"{run_id} is marked FAILED"
    except Exception as exc:
        return f"{run_id} could not be marked FAILED either ({type(exc).__name__}: {exc})"


def end_worker_machine_run(node_rank: int, nnodes: int) -> None:
    """End this process's MLflow run, FINISHED, tagged as a worker machine's (training on several machines): the
    model, its metrics and the outputs are in the run of the machine holding rank 0."""
    try:
        import mlflow

        if mlflow.active_run() is None:
            return
        mlflow.set_tags({"node_rank": str(node_rank), "machine": f"worker {node_rank} of {nnodes}: no outputs or "
                         "training metrics here; they are in the run of the machine holding rank 0"})
        mlflow.end_run("FINISHED")
    except Exception as exc:  # tracking never fails a run
        log.error("Could not mark the MLflow run as a worker machine's: %s: %s", type(exc).__name__, exc)


class MarkInterruptedRuns:
    """SIGTERM, SIGHUP and Ctrl-C during a run end its MLflow run as KILLED (instead of RUNNING forever, or
    FINISHED by MLflow's exit handler). The signal unwinds the run as an exception (temporary files are removed
    on the way) and the process exits with 128 + the signal number (Ctrl-C: KeyboardInterrupt, as usual)."""

    SIGNALS = ("SIGTERM", "SIGHUP", "SIGINT")

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self.received: int | None = None

    @hook_impl(trylast=True)  # after kedro-mlflow opened the run
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._interrupted)
        atexit.register(self._mark_killed)  # runs before MLflow's own exit handler (registered earlier)

    def _interrupted(self, number, frame) -> None:
        self.received = number
        self._restore()
        log.error("Received %s: stopping the run; its MLflow run is marked KILLED", signal.Signals(number).name)
        if number == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + number)

    def _mark_killed(self) -> None:
        if self.received is None:
            return
        try:
            import mlflow

            while mlflow.active_run() is not None:
                mlflow.end_run("KILLED")
        except Exception as exc:
            log.error("Could not mark the interrupted MLflow run KILLED: %s: %s", type(exc).__name__, exc)

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    @hook_impl
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        self._restore()
        atexit.unregister(self._mark_killed)

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        self._restore()
        atexit.unregister(self._mark_killed)


def source_version(project: Path) -> dict:
    """The commit the project's code is at and whether its tree has uncommitted changes (``dirty``); ``unknown``
    and None outside a git checkout or without git."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def close_dead_run(holder: dict) -> str | None:
    """The MLflow run of a process that died holding a lock (kill -9, the OOM killer: no exit handler ran) is left
    RUNNING: mark it KILLED. ``holder`` is what its lock file said (``mlflow_run_id``, ``mlflow_tracking_uri``);
    returns what was done, None when there was nothing to do."""
    run_id, uri = holder.get("mlflow_run_id"), holder.get("mlflow_tracking_uri")
    if not run_id or not uri:
        return None
    try:
        import mlflow

        client = mlflow.MlflowClient(uri)
        if client.get_run(run_id).info.status != "RUNNING":
            return None
        client.set_terminated(run_id, "KILLED")
        return f"its MLflow run {run_id}, left RUNNING, is marked KILLED"
    except Exception as exc:  # the store may be gone or elsewhere: the new run goes on
        return f"its MLflow run {run_id} could not be marked KILLED ({type(exc).__name__}: {exc})"
