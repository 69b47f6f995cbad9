"""The submission models, trained on every labelled experiment (the README's "final fit"), in one command:

    python -m rxrx1_pipeline.runs.final_fit [--env ENV]

First a held-out run (``kedro run --pipelines=full``; it reuses trained models whose settings are unchanged)
fits the assignment temperature on the validation experiments and finds the copied test experiments. Then
every model in use, the shared one and each cell line's, is trained again with the validation experiments too
and the copied experiments' wells labelled by their map (``heldout_copies``), and the submission is solved
with that temperature: ``temperature: auto`` needs validation wells that the models have not seen.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from rxrx1_pipeline.leak.copies import copied_only
from rxrx1_pipeline.leak.plates import CELL_LINES
from rxrx1_pipeline.schema import SharedTraining, plain

COPY_COLUMNS = ("experiment", "source", "plate_order", "copied")  # what the final run reads of the copies


def final_fit_overrides(parameters: dict[str, Any], temperature: float) -> dict[str, Any]:
    """The parameter overrides of a final fit: ``final_fit`` for each cell line of ``parameters`` and for the
    shared model (when it is trained), and the held-out run's assignment ``temperature``."""
    parameters = plain(parameters)  # Kedro hands the blocks it checked as models
    overrides: dict[str, Any] = {}
    if "shared_training" in parameters and SharedTraining.model_validate(parameters["shared_training"]).epochs:
        overrides["shared_training.final_fit"] = True
    for cell_line in CELL_LINES:
        if cell_line in parameters:
            overrides[f"{cell_line}.training.final_fit"] = True
    overrides["postprocess.assignment.temperature"] = float(temperature)
    return overrides


def params_option(overrides: dict[str, Any]) -> str:
    """``overrides`` as the value of ``kedro run --params``."""
    return ",".join(f"{key}={str(value).lower() if isinstance(value, bool) else value}"
                    for key, value in overrides.items())


def _kedro_run(env: str, params: str | None = None) -> None:
    command = [sys.executable, "-m", "kedro", "run", f"--env={env}", "--pipelines=full"]
    command += [f"--params={params}"] if params else []
    print("+ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="local", help="Kedro environment (conf folder), e.g. real")
    env = parser.parse_args(argv).env

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = Path.cwd()
    bootstrap_project(project)  # fails at once outside a Kedro project
    _kedro_run(env)
    with KedroSession.create(project_path=project, env=env) as session:
        context = session.load_context()
        calibration = context.catalog.load("postprocess_calibration")
        overrides = final_fit_overrides(context.params, calibration["temperature"])
        copies = context.catalog.load("copied_experiments")
        copies = copied_only(copies)[list(COPY_COLUMNS)] if len(copies) else pd.DataFrame(columns=list(COPY_COLUMNS))
        context.catalog.save("heldout_copies", copies)
    source = (f"fitted on {calibration['wells']} validation wells" if calibration["fitted"]
              else "set in the parameters")
    copied = (", ".join(f"{r.experiment} (the map of {r.source})" for r in copies.itertuples()) or "none")
    print(f"held-out run: assignment temperature {calibration['temperature']:.4f} ({source}); copied experiments "
          f"trained on in the final fit: {copied}; now the final fit", flush=True)
    _kedro_run(env, params_option(overrides))
    print("final fit done: the submission comes from models trained on every labelled experiment; its stage "
          "table scores wells they were trained on: judge the models by the held-out run's table above")


if __name__ == "__main__":
    main()
