"""Project hooks: parameters are validated before a run starts."""

from __future__ import annotations

from kedro.framework.hooks import hook_impl

from rxrx1_pipeline.schema import validate_parameters


class ValidateParameters:
    """Checks every parameter block the selected pipeline reads against the schema, before any node runs."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        blocks = {name.removeprefix("params:").split(".")[0] for name in pipeline.datasets()
                  if name.startswith("params:")}
        validate_parameters(catalog.load("parameters"), blocks)
