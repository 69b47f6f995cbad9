"""The final-fit command's overrides: every model in use trains on the validation experiments too, and the
held-out temperature replaces `auto`, which the parameter check then accepts."""

import pytest

from rxrx1_pipeline.runs.final_fit import final_fit_overrides, params_option
from rxrx1_pipeline.schema import ParameterError, validate_parameters
from tests.test_schema import conf


def apply(parameters: dict, overrides: dict) -> dict:
    """``overrides`` (dotted keys) applied to a copy of ``parameters``, as ``kedro run --params`` does."""
    import copy

    result = copy.deepcopy(parameters)
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        block = result
        for key in path:
            block = block[key]
        block[last] = value
    return result


@pytest.mark.parametrize("env", ["local", "rxrx1_shaped", "real"])
def test_every_model_in_use_is_final_fitted_with_the_held_out_temperature(env):
    parameters = conf(env)
    overrides = final_fit_overrides(parameters, 0.66)
    assert overrides == {"shared_training.final_fit": True, "HEPG2.training.final_fit": True,
                         "HUVEC.training.final_fit": True, "RPE.training.final_fit": True,
                         "U2OS.training.final_fit": True, "postprocess.assignment.temperature": 0.66}
    with pytest.raises(ParameterError, match=r"shared_training\.final_fit = True with postprocess\.assignment"):
        validate_parameters(apply(parameters, {k: v for k, v in overrides.items() if "temperature" not in k}))
    validate_parameters(apply(parameters, overrides))


def test_without_a_shared_model_only_the_cell_lines_are_final_fitted():
    parameters = conf()
    parameters["shared_training"] = {**parameters["shared_training"], "epochs": 0}
    del parameters["RPE"]
    assert final_fit_overrides(parameters, 1.5) == {
        "HEPG2.training.final_fit": True, "HUVEC.training.final_fit": True, "U2OS.training.final_fit": True,
        "postprocess.assignment.temperature": 1.5}


def test_params_option_writes_kedro_run_params_syntax():
    assert params_option({"a.final_fit": True, "postprocess.assignment.temperature": 0.5}) == \
        "a.final_fit=true,postprocess.assignment.temperature=0.5"


def test_final_fit_command_runs_held_out_then_final_with_its_temperature(project_copy):
    """`python -m rxrx1_pipeline.runs.final_fit` on a tiny project: two `full` runs, the second with every model
    final-fitted and the first run's fitted temperature (not re-fitted on the now-trained-on wells)."""
    import json
    import os
    import re
    import subprocess
    import sys

    import mlflow
    import pandas as pd

    from tests.tiny_project import shrink_project
    from tests.conftest import kedro_run

    shrink_project(project_copy)
    assert kedro_run(project_copy, "--pipelines=synthetic", timeout=300).returncode == 0
    result = subprocess.run([sys.executable, "-m", "rxrx1_pipeline.runs.final_fit"], cwd=project_copy, text=True,
                            capture_output=True, timeout=600, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    held_out = float(re.search(r"held-out run: assignment temperature ([0-9.]+) \(fitted on \d+ validation",
                               result.stdout)[1])
    calibration = json.loads((project_copy / "data/08_reporting/postprocess_calibration.json").read_text())
    assert calibration["fitted"] is False and round(calibration["temperature"], 4) == held_out
    assert "shared model: final fit" in result.stderr and "HEPG2: final fit" in result.stderr
    # the held-out run's copies are what the final run's models read (the tiny data set plants none)
    heldout = pd.read_csv(project_copy / "data/03_primary/heldout_copied_experiments.csv")
    found = pd.read_csv(project_copy / "data/08_reporting/copied_experiments.csv")
    assert list(heldout.columns) == ["experiment", "source", "plate_order", "copied"]
    assert list(heldout["experiment"]) == list(found.loc[found["copied"], "experiment"])
    assert f"copied experiments trained on in the final fit: {'none' if heldout.empty else ''}" in result.stdout

    client = mlflow.MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id],
                              order_by=["attributes.start_time ASC"])
    assert [run.info.run_name for run in runs] == ["full", "full"]
    for run, final in zip(runs, ("False", "True")):
        assert run.info.status == "FINISHED"
        assert run.data.params["shared_training.final_fit"] == final
        assert run.data.tags["runner"] == "SequentialRunner"
        assert run.data.params["HEPG2.training.final_fit"] == final
