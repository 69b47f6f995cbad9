"""The final-fit command's overrides: every model in use trains on the validation experiments too, and the
held-out temperature replaces `auto`, which the parameter check then accepts."""

import pytest

from rxrx1_pipeline.final_fit import final_fit_overrides, params_option
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


def test_params_option_is_what_kedro_run_parses():
    assert params_option({"a.final_fit": True, "postprocess.assignment.temperature": 0.5}) == \
        "a.final_fit=true,postprocess.assignment.temperature=0.5"
