"""The hooks of kedro-mlflow and kedro-viz as this project registers them (settings.py disables the plugins' own
registration), each changed where its default misleads:

- :class:`ProjectMlflowHook`: kedro-mlflow's hook (one MLflow run per ``kedro run``). A parameter block that
  Kedro built as a model (``schema.py``) is logged one setting per parameter (``HEPG2.training.lr``), not as one
  repr string beside them; the Kedro session id is tagged ``kedro.session_id`` (kedro-mlflow tags it ``run_id``,
  next to MLflow's own run id); the experiment is tagged a machine-learning one (``mlflow.experimentKind``). The
  MLflow 3.17 UI chooses its view by the "GenAI / Model training" switch of its sidebar (remembered by the
  browser, GenAI at first) or a ``workflowType`` in the address, not by that tag: a run ends by logging its page's
  address in the Model training view.
- :class:`MainJobWorkflow`: kedro-viz's recorder of the Workflow view (``.viz/kedro_pipeline_events.json``)
  keeps the last whole run of the main job; kedro-viz 12.5 lets any ``--pipelines=X`` run replace it.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
from kedro_viz.integrations.kedro.hooks import DatasetStatsHook
from kedro_viz.integrations.kedro.run_hooks import PipelineRunStatusHook

__all__ = ["EXPERIMENT_KIND", "DatasetStatsHook", "MainJobWorkflow", "ProjectMlflowHook", "is_main_job"]

log = logging.getLogger(__name__)

# The experiment tag by which MLflow UIs tell a machine-learning experiment (runs table) from a GenAI one.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# Run parameters that make a run a part of its pipeline.
FILTERS = ("tags", "from_nodes", "to_nodes", "node_names", "from_inputs", "to_outputs", "namespaces",
           "only_missing_outputs")


def plain_parameters(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with every parameter block that is a pydantic model as its dict (kedro-mlflow flattens dicts)."""
    from pydantic import BaseModel

    return {name: value.model_dump(mode="json") if name.startswith("params:") and isinstance(value, BaseModel)
            else value for name, value in inputs.items()}


class ProjectMlflowHook(MlflowHook):
    """kedro-mlflow's hook with flattened parameter blocks and tags that say what they hold (module docstring); a
    run ends by logging the address of its page in the MLflow UI."""

    def __init__(self) -> None:
        super().__init__()
        self._experiment_id: str | None = None

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        super().before_pipeline_run({**run_params, "run_id": None}, pipeline, catalog)  # tags skip empty values
        import mlflow

        run = mlflow.active_run()
        if run is None or not self._is_mlflow_enabled:
            return
        self._experiment_id = run.info.experiment_id
        mlflow.set_tag("kedro.session_id", run_params.get("run_id"))
        client = mlflow.MlflowClient()
        for key, value in EXPERIMENT_KIND.items():
            client.set_experiment_tag(run.info.experiment_id, key, value)

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        super().before_node_run(node, catalog, plain_parameters(inputs), is_async)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        """Ends the run (kedro-mlflow), then says where to see it."""
        super().after_pipeline_run(run_params, pipeline, catalog)
        if self._is_mlflow_enabled and self.run_id is not None and self._experiment_id is not None:
            ui = self.mlflow_config.ui
            log.info("MLflow run %s: `kedro mlflow ui`, then %s", self.run_id,
                     run_page(ui.host, ui.port, self._experiment_id, self.run_id))


def run_page(host: str, port: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run, in its machine-learning view (MLflow 3.17 opens in its GenAI view unless the
    URL or the switch at the top of its sidebar says otherwise)."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def is_main_job(run_params: dict[str, Any]) -> bool:
    """Whether a run is a whole run of the main job: ``full`` (the default pipeline), unfiltered."""
    names = run_params.get("pipeline_names") or ["__default__"]
    return set(names) <= {"full", "__default__"} and not any(run_params.get(key) for key in FILTERS)


class MainJobWorkflow(PipelineRunStatusHook):
    """kedro-viz's Workflow recorder, fed by whole runs of the main job only: a re-solve, a preset generation or
    one cell line's training leave the main job's statuses and times in view."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline) -> None:
        self._events = []  # this run's events only (a notebook or a test runs several in one process)
        self._should_collect_events = False
        if is_main_job(run_params):
            super().before_pipeline_run(run_params, pipeline)  # turns collecting on for a sequential runner only
        else:
            log.debug("kedro viz's Workflow view keeps the last run of `full`; this run is not recorded there")
