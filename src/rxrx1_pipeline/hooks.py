"""Project hooks: parameters are validated before a run starts; metrics and artifacts go to MLflow."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from kedro.framework.hooks import hook_impl

from rxrx1_pipeline.schema import validate_parameters


class ValidateParameters:
    """Checks every parameter block the selected pipeline reads against the schema, before any node runs.

    It runs before the other hooks (``tryfirst``), so a refused run leaves no open MLflow run behind.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        blocks = {name.removeprefix("params:").split(".")[0] for name in pipeline.datasets()
                  if name.startswith("params:")}
        validate_parameters(catalog.load("parameters"), blocks)


# Catalog entries whose files are attached to the MLflow run once they are written.
ARTIFACTS = ("submission", "report", "training_curves", "postprocess_chart", "postprocess_metrics")


class TrackRun:
    """Logs a run's metrics and output files to the MLflow run that kedro-mlflow opened for it.

    Per-epoch training curves become metric histories (``HEPG2.loss`` at step = epoch), the stage table
    becomes ``valid.<name>.<stage>`` metrics, and the files in ``ARTIFACTS`` are attached after their
    (atomic) save. Without an active run, e.g. a pipeline run outside a Kedro session, it does nothing.
    """

    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

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

    ``<cell line>.history`` gives one history per numeric column over the epochs; ``postprocess_metrics``
    gives the raw/masked/assigned accuracy and layout correctness per cell line and overall (step 0).
    """
    history = re.fullmatch(r"(\w+)\.history", dataset_name)
    if history:
        cell_line = history.group(1)
        return {f"{cell_line}.{column}": [(int(epoch), float(value))
                                           for epoch, value in zip(data["epoch"], data[column]) if pd.notna(value)]
                for column in data.columns if column != "epoch" and pd.api.types.is_numeric_dtype(data[column])}
    if dataset_name == "postprocess_metrics":
        rows = data[data["level"].isin(["cell_line", "overall"])]
        return {f"valid.{row['name']}.{stage}": [(0, float(row[stage]))]
                for _, row in rows.iterrows() for stage in ("raw", "masked", "assigned", "layout_correct")}
    return {}
