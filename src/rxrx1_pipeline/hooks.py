"""Project hooks: parameters are validated before a run starts, one run at a time per output root, metrics and
artifacts go to MLflow."""

from __future__ import annotations

import atexit
import logging
import re
import sys
from pathlib import Path

import pandas as pd
from kedro.framework.hooks import hook_impl

from rxrx1_pipeline.runs.locks import RUN_LOCK, FileLock, LockError
from rxrx1_pipeline.schema import ParameterError, check_across_blocks, unknown_blocks, unknown_keys

log = logging.getLogger(__name__)


class ValidateParameters:
    """What Kedro's own check of each parameter block (the node's type hint: a model of ``schema.py``) cannot
    see, before any node runs: a key no node reads at any level of any parameters file (refused as soon as the
    context exists, before Kedro builds the blocks, naming the file, the key and the nearest known key), the
    rules across blocks, and timm's ImageNet weights for every model trained from them (fetched into timm's
    cache now, or the run stops naming the settings to change).

    It runs before the other hooks (``tryfirst``), so a refused run leaves no open MLflow run behind.
    """

    def __init__(self) -> None:
        self._conf: list[Path] = []

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        conf = Path(context.project_path) / "conf"
        self._conf = [conf / "base", conf / (context.env or "local")]
        parameters = context.config_loader["parameters"]  # every parameters file, and --params
        unknown = unknown_keys(parameters)
        if unknown:
            where = files_defining(unknown, self._conf)
            raise ParameterError("invalid parameters (nothing was run):\n  " + "\n  ".join(
                (f"{key}: no such parameter block" if "." not in key else
                 f"{key} = {value_at(parameters, key)!r}: no such setting")
                + (f" in {where[key]}" if key in where else " (given with --params)") + near
                for key, near in unknown.items()))

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        names = sorted(name.removeprefix("params:") for name in pipeline.datasets() if name.startswith("params:"))
        parameters = catalog.load("parameters")
        check_across_blocks(parameters, {name.split(".")[0] for name in names},
                            where=files_defining(unknown_blocks(parameters), self._conf))
        for name in names:
            training = catalog.load(f"params:{name}") if name.endswith("training") else None
            # a model fine-tuned from the shared one starts from the shared model's weights, not timm's
            if training is not None and training.pretrained == "imagenet" and training.init == "scratch":
                from rxrx1_pipeline.nn.network import fetch_imagenet_weights

                fetch_imagenet_weights(training.arch, name)


def files_defining(keys, folders: list[Path]) -> dict[str, str]:
    """For each parameter key (a dotted path, ``HEPG2.training.lr``), the parameters files of ``folders`` that
    define it (comma-separated, relative to conf/), as Kedro's config loader finds them."""
    import yaml

    found: dict[str, list[str]] = {}
    for folder in folders:
        files = {*folder.glob("parameters*.yml"), *folder.glob("parameters*/**/*.yml"),
                 *folder.glob("**/parameters*.yml")}
        for file in sorted(files):
            content = yaml.safe_load(file.read_text()) or {}
            for key in keys:
                if value_at(content, key, missing := object()) is not missing:
                    found.setdefault(key, []).append(f"{folder.name}/{file.relative_to(folder)}")
    return {key: ", ".join(files) for key, files in found.items()}


def value_at(mapping: dict, path: str, default=None):
    """The value at a dotted ``path`` of nested dicts (a list position as a number), or ``default``."""
    value = mapping
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return default
    return value


# Catalog entries whose files are attached to the MLflow run once they are written.
ARTIFACTS = ("submission", "report", "training_curves", "postprocess_chart", "postprocess_metrics", "test_metrics",
             "copied_experiments")


class TrackRun:
    """Logs a run's metrics and output files to the MLflow run that kedro-mlflow opened for it.

    Per-epoch training curves become metric histories (``HEPG2.loss`` at step = epoch), the stage table
    becomes ``valid.<name>.<stage>`` metrics, and the files in ``ARTIFACTS`` are attached after their
    (atomic) save. Without an active run, e.g. a pipeline run outside a Kedro session, it does nothing. The
    parameters are logged by kedro-mlflow's hook (runs/plugin_hooks.py), one setting per MLflow param.
    """

    def __init__(self) -> None:
        self._catalog = None
        self._project: Path | None = None
        self._run_catalog = None
        self._identity: dict | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project = Path(context.project_path)

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def before_pipeline_run(self, run_params: dict, catalog) -> None:
        """Tags the MLflow run with the code's commit (``mlflow.source.git.commit``, and ``source.dirty`` when the
        tree had uncommitted changes) and the runner's class name (Kedro hands hooks the runner object's repr), and
        notes this run's identity (the report's header): the run, its start, environment, commit and the settings
        it changed of the schema's defaults. ``run_identity`` is written only when a node is about to read it, so
        a run that fails earlier, or does not build the report, leaves the last report's file as it was."""
        from datetime import datetime, timezone

        import mlflow

        from rxrx1_pipeline.runs.tracking import source_version
        from rxrx1_pipeline.schema import changed_settings

        source = source_version(self._project or Path.cwd())
        run = mlflow.active_run()
        if run is not None:
            mlflow.set_tags({"runner": runner_name(str(run_params.get("runner", ""))),
                             "mlflow.source.git.commit": source["commit"], "source.dirty": str(source["dirty"])})
        self._run_catalog = catalog
        self._identity = {
            "run": run.info.run_id if run is not None else f"kedro session {run_params.get('run_id')}",
            "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "environment": run_params.get("env") or "local", "pipeline": run_params.get("pipeline_names")
            or run_params.get("pipeline_name") or "__default__", **source,
            "settings": changed_settings(catalog.load("parameters"))}

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str, node) -> None:
        """Writes this run's ``run_identity`` just before a node of this run reads it."""
        if dataset_name == "run_identity" and self._identity is not None and "run_identity" in self._run_catalog:
            self._run_catalog.save("run_identity", self._identity)
            self._identity = None

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._run_catalog, self._identity = None, None

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._run_catalog, self._identity = None, None

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data) -> None:
        import mlflow

        if mlflow.active_run() is None:
            return
        if isinstance(data, pd.DataFrame):
            metrics = tracked_metrics(dataset_name, data)
            for key, values in metrics.items():
                for step, value in values:
                    mlflow.log_metric(key, value, step=step)
        if dataset_name in ARTIFACTS and self._catalog is not None:
            path = getattr(self._catalog[dataset_name], "_filepath", None)
            if path is not None and Path(str(path)).is_file():
                mlflow.log_artifact(str(path))


def tracked_metrics(dataset_name: str, data: pd.DataFrame) -> dict[str, list[tuple[int, float]]]:
    """The MLflow metrics (name -> [(step, value)]) that a saved dataset carries; empty for most datasets.

    ``<cell line>.history`` gives one history per numeric column over the epochs; ``postprocess_metrics`` (and
    ``test_metrics``, from released test labels) the raw/masked/assigned accuracy and layout correctness per cell
    line and overall (step 0): ``valid.<name>.<stage>`` (``test.<name>.<stage>``, with ``submission``).
    """
    history = re.fullmatch(r"(\w+)[._]history", dataset_name)  # <cell line>.history, shared_history
    if history:
        cell_line = history.group(1)
        return {f"{cell_line}.{column}": [(int(epoch), float(value))
                                           for epoch, value in zip(data["epoch"], data[column]) if pd.notna(value)]
                for column in data.columns if column != "epoch" and pd.api.types.is_numeric_dtype(data[column])}
    if dataset_name in ("postprocess_metrics", "test_metrics"):
        split = "valid" if dataset_name == "postprocess_metrics" else "test"
        rows = data[data["level"].isin(["cell_line", "overall"])]
        stages = [s for s in ("raw", "masked", "assigned", "layout_correct", "submission") if s in data]
        return {f"{split}.{row['name']}.{stage}": [(0, float(row[stage]))]
                for _, row in rows.iterrows() for stage in stages}
    return {}


def runner_name(runner: str) -> str:
    """``<kedro.runner.sequential_runner.SequentialRunner object at 0x...>`` as ``SequentialRunner``."""
    match = re.search(r"([A-Za-z_]\w*) object at 0x", runner)
    return match.group(1) if match else runner


class OneRunPerOutputRoot:
    """Refuses a ``kedro run`` whose output root (``output_root`` in conf globals; also ``image_store_root``
    when it lies outside it) another live run is writing, naming that run; takes over the lock file a dead run
    left, and marks the MLflow run of that dead run KILLED when it was left RUNNING (kill -9, the OOM killer). The
    lock is taken after the parameter check and before kedro-mlflow opens a run, and released when the run ends
    (the kernel releases it if the process is killed)."""

    def __init__(self) -> None:
        self._roots: list[Path] = []
        self._locks: list[FileLock] = []
        self._noted = False

    @hook_impl
    def after_context_created(self, context) -> None:
        project = Path(context.project_path)
        globals_ = context.config_loader["globals"] if "globals" in context.config_loader.config_patterns else {}
        output = (project / str(globals_.get("output_root", "data"))).absolute()
        roots = [output]
        store = globals_.get("image_store_root")
        if store is not None:
            store = (project / str(store)).absolute()
            if not store.is_relative_to(output):
                roots.append(store)
        self._roots = roots

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._release()  # a previous run of this process that ended without the after-run hooks
        if pipeline is not None and several_machines(catalog, pipeline):
            log.warning("training on several machines (distributed.nnodes > 1): every machine runs this pipeline "
                        "on the shared output root, so it is not locked to one run")
            return
        try:
            for root in self._roots:
                self._locks.append(FileLock(root / RUN_LOCK, f"output root {root}").acquire())
        except LockError:
            self._release()
            raise
        atexit.register(self._release)  # a run stopped by a signal (SystemExit, KeyboardInterrupt) removes it too
        from rxrx1_pipeline.runs.tracking import close_dead_run

        for lock in self._locks:
            closed = close_dead_run(lock.previous)
            if closed:
                log.warning("The run that held %s died without closing: %s", lock.what, closed)
        self._noted = False

    @hook_impl
    def before_node_run(self) -> None:
        """Once per run, after kedro-mlflow opened its MLflow run: the run's id goes into the lock files."""
        if self._noted or not self._locks:
            return
        self._noted = True
        mlflow = sys.modules.get("mlflow")  # imported by kedro-mlflow when it tracks
        run = mlflow.active_run() if mlflow is not None else None
        if run is not None:
            for lock in self._locks:
                lock.note(mlflow_run_id=run.info.run_id, mlflow_tracking_uri=mlflow.get_tracking_uri())

    @hook_impl(trylast=True)
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        self._release()

    @hook_impl(trylast=True)
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        self._release()

    def _release(self) -> None:
        while self._locks:
            self._locks.pop().release()
        atexit.unregister(self._release)


def several_machines(catalog, pipeline) -> bool:
    """Whether a training block of ``pipeline`` runs on several machines: each runs the same `kedro run` on
    the shared output root (README: "More than one GPU"), which a lock would refuse."""
    names = [name for name in pipeline.datasets() if name.startswith("params:") and name.endswith("training")]
    return any(catalog.load(name).distributed.nnodes > 1 for name in names)
