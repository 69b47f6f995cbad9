"""Kedro project settings."""

import logging
import os
import warnings

from kedro.config import OmegaConfigLoader

from rxrx1_pipeline.hooks import OneRunPerOutputRoot, TrackRun, ValidateParameters
from rxrx1_pipeline.kedro_io.catalog import AtomicDataCatalog
from rxrx1_pipeline.runs.tracking import CheckTrackingStore, MarkInterruptedRuns, TrackingCannotFailRuns

# kedro-mlflow's pipeline model has no type hints on `predict`, and mlflow says so (in raw ANSI colours) when the
# plugin defines it, i.e. on every kedro command. mlflow forces its own filter on that warning, so the plugin's
# model is defined here, once, with the warnings of that import recorded instead of shown. Every other warning
# is shown as usual.
with warnings.catch_warnings(record=True):
    import kedro_mlflow.mlflow  # noqa: F401
# (imported after that block: the plugins' hooks import that model)
from rxrx1_pipeline.runs.plugin_hooks import DatasetStatsHook, MainJobWorkflow, ProjectMlflowHook

# When `full` logs the scoring model (pipelines/score), mlflow notes that a pickled Python model runs code when
# loaded (true of every pickle; the README says to load only models of runs one trusts) and draws a progress bar
# per file it copies: the run's log keeps neither.
logging.getLogger("mlflow.pyfunc").addFilter(lambda record: "serialized using CloudPickle" not in record.getMessage())
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# kedro-viz 12.5 builds its API on a FastAPI response class that FastAPI now deprecates (kedro viz only).
warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")

CONFIG_LOADER_CLASS = OmegaConfigLoader
# "soft" merging lets an environment (e.g. conf/real) override single nested keys such as HUVEC.training.epochs.
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft", "globals": "soft", "mlflow": "soft"},
}
# Parameters are checked against the schema (schema.py) before a run starts. kedro-mlflow's hook opens one MLflow
# run per `kedro run` (registered last, so it opens the run before TrackRun logs into it); TrackRun logs its
# metrics and artifacts. kedro-mlflow's and kedro-viz's hooks are registered here in the project's versions
# (runs/plugin_hooks.py: parameter blocks flattened, tags named for what they hold, the Workflow view of kedro viz
# kept on the main job), not by the plugins.
# One run per output root: a second `kedro run` writing the same outputs is refused naming the first
# (hooks.OneRunPerOutputRoot, runs/locks.py); registered before ValidateParameters, so it locks after the
# parameters passed (LIFO order).
# The MLflow store is checked before kedro-mlflow opens it; a tracking error after the start is reported without
# failing the run; an interrupted run is marked KILLED in MLflow (runs/tracking.py).
HOOKS = (OneRunPerOutputRoot(), ValidateParameters(), TrackRun(), CheckTrackingStore(), TrackingCannotFailRuns(),
         MarkInterruptedRuns(), DatasetStatsHook(), MainJobWorkflow(), ProjectMlflowHook())
# Matched against each plugin's distribution name as its metadata spells it (kedro_mlflow 2.0.3, kedro-viz 12.5).
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow", "kedro-viz", "kedro_viz")
# Every file a catalog dataset writes goes to a temporary name and is renamed into place.
DATA_CATALOG_CLASS = AtomicDataCatalog
