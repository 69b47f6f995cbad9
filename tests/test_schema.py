"""The parameter schema: the shipped conf passes; each bad value is named with the key, value and rule;
a run with bad parameters stops before any node runs."""

import pytest
from kedro.config import OmegaConfigLoader

from rxrx1_pipeline.schema import ParameterError, validate_parameters
from rxrx1_pipeline.settings import CONFIG_LOADER_ARGS
from tests.conftest import ROOT


def conf(env: str = "local") -> dict:
    return dict(OmegaConfigLoader(str(ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)["parameters"])


@pytest.mark.parametrize("env", ["local", "rxrx1_shaped", "real"])
def test_shipped_parameters_are_valid(env):
    validate_parameters(conf(env))


BAD = {
    "negative temperature": (("postprocess", "assignment", "temperature"), -1,
                             r"postprocess\.assignment\.temperature = -1: must be 'auto' .* or a number > 0"),
    "zero temperature": (("postprocess", "assignment", "temperature"), 0, r"temperature = 0: must be 'auto'"),
    "negative sinkhorn": (("postprocess", "assignment", "sinkhorn_iterations"), -1,
                          r"sinkhorn_iterations = -1: Input should be greater than or equal to 0"),
    "unknown cost": (("postprocess", "assignment", "cost"), "l2", r"cost = 'l2': Input should be 'prob' or 'log_prob'"),
    "bounds reversed": (("postprocess", "assignment", "temperature_bounds"), [5.0, 1.0],
                        r"postprocess\.assignment: temperature_bounds must be \[low, high\] with low < high"),
    "pseudo-labels after the last epoch": (("HEPG2", "training", "pseudo_labels"), {"start_epoch": 99},
                                           r"HEPG2\.training: pseudo_labels\.start_epoch 99 is after the last epoch"),
    "shared model with pseudo-labels": (("shared_training", "pseudo_labels"), {"start_epoch": 1},
                                        r"shared_training: the shared model starts from scratch"),
    "crop of no area": (("RPE", "training", "augment"), {"crop_min_area": 0}, r"crop_min_area = 0: Input should be"),
    "negative epochs": (("RPE", "training", "epochs"), -3, r"RPE\.training\.epochs = -3"),
    "zero held out": (("HUVEC", "training", "valid_experiments"), 0,
                      r"HUVEC\.training\.valid_experiments = 0: must be"),
    "unknown head": (("U2OS", "training", "head"), "cos", r"U2OS\.training\.head = 'cos': Input should be 'cosface'"),
    "typo key": (("HEPG2", "training", "epoch"), 3, r"HEPG2\.training\.epoch = 3: Extra inputs are not permitted"),
    "tta 9": (("inference", "tta"), 9, r"inference\.tta = 9: Input should be less than or equal to 8"),
    "unknown cell line": (("synthetic", "cell_lines"), ["HEPG2", "A549"], r"synthetic\.cell_lines\.1 = 'A549'"),
    "too many siRNAs": (("synthetic", "sirnas_per_group"), 400, r"must fit the 308 wells"),
    "batch not split": (("HEPG2", "training", "distributed"), {"nproc_per_node": 3},
                        r"HEPG2\.training: batch_size 64 is the global batch: it must divide by the 3 DDP"),
    "zero processes": (("HUVEC", "training", "distributed"), {"nproc_per_node": 0},
                       r"HUVEC\.training\.distributed\.nproc_per_node"),
    "nodes without endpoint": (("RPE", "training", "distributed"), {"nnodes": 2}, r"needs rdzv_endpoint"),
    "final fit with fitted temperature": (("U2OS", "training", "final_fit"), True,
                                          r"U2OS\.training\.final_fit = True with postprocess\.assignment\."
                                          r"temperature = 'auto': the validation wells are then training data"),
    "shared final fit with fitted temperature": (("shared_training", "final_fit"), True,
                                                 r"shared_training\.final_fit = True with postprocess\.assignment\."
                                                 r"temperature = 'auto'"),
}


@pytest.mark.parametrize("path, value, message", BAD.values(), ids=BAD.keys())
def test_bad_value_is_named(path, value, message):
    params = conf()
    block = params
    for key in path[:-1]:
        block[key] = dict(block[key])
        block = block[key]
    block[path[-1]] = value
    with pytest.raises(ParameterError, match=message):
        validate_parameters(params)


def test_only_the_selected_blocks_are_checked():
    params = conf()
    params["inference"] = {**params["inference"], "tta": 0}
    validate_parameters(params, {"postprocess", "HEPG2"})
    with pytest.raises(ParameterError, match="missing"):
        validate_parameters({"postprocess": params["postprocess"]}, {"postprocess", "HEPG2"})


def test_a_run_with_bad_parameters_writes_nothing(project_copy):
    from tests.conftest import session_run

    with pytest.raises(ParameterError, match=r"postprocess\.assignment\.temperature = -1"):
        session_run(project_copy, "postprocess", {"postprocess": {"assignment": {"temperature": -1}}})
    assert not any(p.is_file() for p in (project_copy / "data").rglob("*") if p.name != ".gitkeep")
    import mlflow

    assert mlflow.active_run() is None  # refused before kedro-mlflow opened a run for it
