"""kedro viz: the full DAG is drawn with its catalog layers in data-flow order (a cycle among the layers of
the stage boxes makes kedro viz drop the layers altogether)."""

from tests.conftest import ROOT


def test_full_dag_layers_are_in_data_flow_order():
    from kedro_viz.data_access import data_access_manager
    from kedro_viz.server import load_and_populate_data

    load_and_populate_data(ROOT)
    data_access_manager.create_modular_pipelines_tree_for_registered_pipeline("__default__")
    layers = data_access_manager.get_sorted_layers_for_registered_pipeline("__default__")
    assert set(layers) == {"raw", "intermediate", "primary", "model_input", "models", "model_output", "reporting"}
    order = ["raw", "intermediate", "model_input", "models", "model_output", "reporting"]
    assert sorted(order, key=layers.index) == order
    assert layers.index("primary") < layers.index("models")


def test_kedro_viz_starts_without_pipelineml_warnings():
    """kedro viz splits `full` (kedro-mlflow's PipelineML) by namespace at start: no "no longer a 'PipelineML'"
    warning per split (76 of them with kedro-mlflow's own methods)."""
    import logging

    from kedro_viz.server import load_and_populate_data

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("kedro_mlflow.pipeline.pipeline_ml")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.WARNING
    try:
        load_and_populate_data(ROOT)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert not [m for m in messages if "no longer a 'PipelineML'" in m]

