"""The parameter schema: the shipped conf passes; each bad value is named with the key, value and rule;
a run with bad parameters stops before any node runs."""

import pytest
import yaml
from kedro.config import OmegaConfigLoader
from pydantic import BaseModel

from rxrx1_pipeline.leak.plates import CELL_LINES
from rxrx1_pipeline.schema import (
    BLOCKS,
    ImageSource,
    Inference,
    ParameterError,
    Postprocess,
    SharedTraining,
    Training,
    changed_settings,
    validate_parameters,
)
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
    "typo key": (("HEPG2", "training", "epoch"), 3, r"HEPG2\.training\.epoch = 3: Extra inputs are not permitted "
                                                   r"\(did you mean epochs\?\)"),
    "nested typo key": (("HEPG2", "training", "augment"), {"cutmx": 0.5},
                        r"HEPG2\.training\.augment\.cutmx = 0\.5: Extra inputs are not permitted \(did you mean "
                        r"cutmix\?\)"),
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
    "shared model's own held-out experiments": (("shared_training", "valid_experiments"), 2,
                                                r"shared_training: valid_experiments 2: the shared model holds out "
                                                r"each cell line's own validation experiments"),
    "fine-tuned line of another network": (("HUVEC", "training", "arch"), "resnet18",
                                           r"HUVEC\.training\.arch = 'resnet18' with init: shared: a cell line "
                                           r"fine-tuned from the shared model keeps its network \(shared_training\."
                                           r"arch = 'test_resnet'\)"),
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


def test_an_unknown_block_is_refused_naming_its_file_and_the_nearest_block(project_copy):
    from tests.conftest import session_run

    (project_copy / "conf/base/parameters_extra.yml").write_text("inferance:\n  tta: 4\n")
    with pytest.raises(ParameterError, match=r"inferance: no such parameter block in base/parameters_extra\.yml "
                                             r"\(did you mean inference\?\)"):
        session_run(project_copy, "postprocess")
    with pytest.raises(ParameterError, match=r"inferance: no such parameter block \(did you mean inference\?\)"):
        validate_parameters({**conf(), "inferance": {"tta": 4}})


def test_unknown_keys_are_found_at_every_level_with_the_nearest_known_key():
    from rxrx1_pipeline.schema import unknown_keys

    params = conf()
    params["HEPG2"] = {**params["HEPG2"], "training": {"lrr": 0.1, "augment": {"cutmx": 1},
                                                       "lr_cycles": [{"lr": 0.1, "until_epch": 3}]}}
    params["postprocess"] = {**params["postprocess"], "assignment": {"temprature": 1}}
    params["synthetic"] = {**params["synthetic"], "experiments": {"train": 1, "tset": 2, "HUVEC": {"tst": 1}}}
    params["_recipe"] = {"anything": 1}  # a YAML anchor: not read, not refused
    assert unknown_keys(params) == {
        "HEPG2.training.lrr": " (did you mean lr?)", "HEPG2.training.augment.cutmx": " (did you mean cutmix?)",
        "HEPG2.training.lr_cycles.0.until_epch": " (did you mean until_epoch?)",
        "postprocess.assignment.temprature": " (did you mean temperature?)",
        "synthetic.experiments.tset": " (did you mean test?)",
        "synthetic.experiments.HUVEC.tst": " (did you mean test?)"}
    assert unknown_keys(conf()) == {}


def test_a_nested_unknown_key_is_refused_naming_its_file_and_the_nearest_key_before_anything_runs(project_copy):
    from tests.conftest import session_run

    train = project_copy / "conf/base/parameters_train.yml"
    train.write_text(train.read_text().replace("HUVEC:\n  cell_line: HUVEC\n  training: {}",
                                               "HUVEC:\n  cell_line: HUVEC\n  training:\n    augment: {cutmx: 0.5}"))
    with pytest.raises(ParameterError, match=r"HUVEC\.training\.augment\.cutmx = 0\.5: no such setting in "
                                             r"base/parameters_train\.yml \(did you mean cutmix\?\)"):
        session_run(project_copy, "postprocess")  # a pipeline that does not even read the block
    train.write_text(train.read_text().replace("augment: {cutmx: 0.5}", "augment: {}"))
    with pytest.raises(ParameterError, match=r"RPE\.training\.epoch = 3: no such setting \(given with --params\) "
                                             r"\(did you mean epochs\?\)"):
        session_run(project_copy, "full", {"RPE": {"training": {"epoch": 3}}})
    assert not any(p.is_file() for p in (project_copy / "data").rglob("*") if p.name != ".gitkeep")
    import mlflow

    assert mlflow.active_run() is None


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
    ({"arch": "resnet_nonexistent"}, r"arch = 'resnet_nonexistent': timm knows no model of that name"),
    ({"arch": "vit_tiny_patch16_224", "image_size": 64, "init": "scratch"},
     r"Parameter 'HEPG2\.training'.*image_size = 64: the backbone arch 'vit_tiny_patch16_224' cannot take 64 px "
     r"images \(timm: Input height \(64\) doesn't match model \(224\)"),
], ids=["rule", "unknown model", "backbone of another size"])
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


def restated_defaults(value, schema, where: str) -> list[str]:
    """Keys of a YAML block (and of its nested blocks) whose value is the schema's default."""
    found = []
    for key, given in (value or {}).items():
        field = schema.model_fields.get(key)
        if field is None:
            continue
        nested = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) \
            else None
        if nested is not None and isinstance(given, dict):
            found += restated_defaults(given, nested, f"{where}.{key}")
        elif not field.is_required() and given == field.get_default(call_default_factory=True):
            found.append(f"{where}.{key} = {given!r}")
    return found


@pytest.mark.parametrize("env", ["base", "rxrx1_shaped", "real"])
def test_no_parameters_file_restates_a_schema_default(env):
    """Each setting has its default in one place, the schema: a parameters file lists only what its environment
    changes. Named recipes (top-level keys starting with ``_``, e.g. conf/real's ``_first_place``) pin every
    setting of a published recipe and are exempt, as are the blocks that are one of them."""
    restated = []
    for file in sorted((ROOT / "conf" / env).glob("parameters_*.yml")):
        content = yaml.safe_load(file.read_text()) or {}
        recipes = [v for k, v in content.items() if k.startswith("_")]
        for key, block in content.items():
            if key.startswith("_") or key == "synthetic":  # the generator's block: the lab's own settings
                continue
            blocks = {key: block} if key in BLOCKS and key not in CELL_LINES else \
                {f"{key}.training": (block or {}).get("training")} if key in CELL_LINES else {}
            for name, value in blocks.items():
                if any(value is recipe for recipe in recipes):
                    continue
                schema = {"shared_training": SharedTraining, "inference": Inference, "postprocess": Postprocess,
                          "images": ImageSource}.get(name, Training)
                restated += [f"{file.relative_to(ROOT)}: {r}" for r in restated_defaults(value, schema, name)]
    assert not restated, "defaults restated (schema.py holds them): " + "; ".join(restated)


def test_a_restated_default_is_found():
    assert restated_defaults({"epochs": 6, "lr": 0.003, "augment": {"cutmix": 0.0, "mixup": 0.5}}, Training, "t") == \
        ["t.lr = 0.003", "t.augment.cutmix = 0.0"]


def test_the_base_environment_runs_the_schema_defaults():
    """conf/base lists no training setting: every cell line and the shared model train with the schema's recipe."""
    params = conf()
    assert SharedTraining.model_validate(params["shared_training"]) == SharedTraining()
    for cell_line in CELL_LINES:
        assert Training.model_validate(params[cell_line]["training"]) == Training()
    assert (SharedTraining().init, SharedTraining().batches, SharedTraining().epochs) == ("scratch", "mixed", 30)
    assert (Training().init, Training().batches, Training().epochs) == ("shared", "per_plate", 15)


def test_changed_settings_name_what_a_run_changed_of_the_base_recipe():
    params = conf("rxrx1_shaped")
    changed = changed_settings(params)
    assert changed["HEPG2.training"] == {"image_size": 32, "epochs": 6}
    assert changed["shared_training"] == {"image_size": 32, "epochs": 12} and changed["inference"] == {}
    assert changed_settings(conf("real"))["shared_training"]["augment.cutmix"] == 1.0
