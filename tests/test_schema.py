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
    "shared model fine-tuned": (("shared_training", "init"), "shared",
                                r"shared_training: the shared model starts from scratch"),
    "pseudo-label shares reversed": (("HEPG2", "training", "pseudo_labels"),
                                     {"start_epoch": 1, "initial_share": 0.8, "final_share": 0.5},
                                     r"initial_share 0\.8 is above final_share 0\.5"),
    "cycles end early": (("RPE", "training", "lr_cycles"), [{"lr": 0.001, "until_epoch": 3}],
                         r"lr_cycles must end at increasing epochs, the last at or after epochs \(15\)"),
    "unknown head kind": (("U2OS", "training", "head"), "arc", r"Input should be 'cosface', 'arcface', 'softmax' or "
                                                                 r"'softmax_arcface'"),
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


def test_weights_by_name_and_from_a_file_are_not_both_set():
    params = conf()
    params["HEPG2"] = {**params["HEPG2"], "training": {**params["HEPG2"]["training"], "pretrained": "imagenet",
                                                       "pretrained_weights": "/weights/densenet161.pth"}}
    with pytest.raises(ParameterError, match=r"HEPG2\.training: pretrained: imagenet and pretrained_weights: "
                                             r"/weights/densenet161\.pth both set"):
        validate_parameters(params)


def test_only_the_selected_blocks_are_checked():
    params = conf()
    params["inference"] = {**params["inference"], "tta": 0}
    validate_parameters(params, {"postprocess", "HEPG2"})
    with pytest.raises(ParameterError, match="missing"):
        validate_parameters({"postprocess": params["postprocess"]}, {"postprocess", "HEPG2"})


def test_a_run_with_bad_parameters_writes_nothing(project_copy):
    from kedro.validation.exceptions import ParameterValidationError

    from tests.conftest import session_run

    with pytest.raises(ParameterValidationError, match=r"Parameter 'postprocess\.assignment'.*"
                                                       r"temperature = -1: must be 'auto'"):
        session_run(project_copy, "postprocess", {"postprocess": {"assignment": {"temperature": -1}}})
    assert not any(p.is_file() for p in (project_copy / "data").rglob("*") if p.name != ".gitkeep")
    import mlflow

    assert mlflow.active_run() is None  # refused before kedro-mlflow opened a run for it


@pytest.mark.parametrize("change, message", [
    ({"epochs": -3}, r"Parameter 'HEPG2\.training'.*epochs = -3: Input should be greater than or equal to 0"),
    ({"epoch": 3}, r"Parameter 'HEPG2\.training'.*epoch = 3: Extra inputs are not permitted"),
    ({"arch": "resnet_nonexistent"}, r"arch = 'resnet_nonexistent': timm knows no model of that name"),
], ids=["rule", "typo", "unknown model"])
def test_kedro_builds_each_block_and_refuses_a_bad_one_before_any_node(project_copy, change, message):
    """Kedro validates a node's typed ``params:`` argument when it builds the catalog, before any node runs."""
    from kedro.validation.exceptions import ParameterValidationError

    from tests.conftest import session_run

    with pytest.raises(ParameterValidationError, match=message):
        session_run(project_copy, "full", {"HEPG2": {"training": change}})
    assert not any(p.is_file() for p in (project_copy / "data").rglob("*") if p.name != ".gitkeep")


def test_nodes_receive_the_values_the_check_converted(project_copy):
    """A value given as text on the command line reaches the node as the checked type ("false" is False)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from rxrx1_pipeline.schema import Training

    bootstrap_project(project_copy)
    with KedroSession.create(project_path=project_copy,
                             runtime_params={"HEPG2": {"training": {"final_fit": "false", "epochs": 2.0}}}) as session:
        context = session.load_context()
        training = context.catalog.load("params:HEPG2.training")
    assert isinstance(training, Training)
    assert training.final_fit is False and training.epochs == 2 and isinstance(training.epochs, int)
