"""A run can be traced: the tracking store is the project's wherever Python starts (a notebook, a script, the CLI
from a subfolder), a run logs each setting as its own parameter (no block as one repr string), its tags say what
they hold, its experiment opens as a machine-learning one, and kedro viz's Workflow view keeps the main job."""

import pytest
import yaml

from rxrx1_pipeline.runs.plugin_hooks import EXPERIMENT_KIND, MainJobWorkflow, ProjectMlflowHook, is_main_job
from rxrx1_pipeline.runs.tracking import project_store_uri, use_project_store
from tests.conftest import ROOT, kedro_run
from tests.tiny_project import shrink_project


def test_a_relative_sqlite_store_is_taken_from_the_project(tmp_path):
    assert project_store_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert project_store_uri("sqlite:///runs/mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/runs/mlflow.db"
    for unchanged in ("sqlite:////srv/mlflow.db", "http://127.0.0.1:5000", "mlruns", "databricks"):
        assert project_store_uri(unchanged, tmp_path) == unchanged


def test_code_outside_a_session_uses_the_projects_store(project_copy, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    try:
        assert use_project_store(project_copy) == f"sqlite:///{project_copy}/mlflow.db"
        assert mlflow.get_tracking_uri() == f"sqlite:///{project_copy}/mlflow.db"
        assert use_project_store() == f"sqlite:///{ROOT}/mlflow.db"  # default: the checkout of this package
    finally:
        mlflow.set_tracking_uri(None)
    assert list(elsewhere.iterdir()) == []


def test_the_notebook_tracks_into_the_projects_store(project_copy):
    """The notebook's first cell (`%load_ext kedro.ipython`) in a kernel started in notebooks/: MLflow points at
    <project>/mlflow.db and no notebooks/mlflow.db is created."""
    import nbformat
    from nbclient import NotebookClient

    notebooks = project_copy / "notebooks"
    notebooks.mkdir()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in (
        "%load_ext kedro.ipython", "import mlflow\nprint(mlflow.get_tracking_uri())")])
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(notebooks)}}).execute()
    assert notebook.cells[1].outputs[0]["text"].strip() == f"sqlite:///{project_copy}/mlflow.db"
    assert (project_copy / "mlflow.db").is_file()
    assert not (notebooks / "mlflow.db").exists()


def test_the_plugins_hooks_run_once_in_the_projects_versions():
    """kedro-mlflow's and kedro-viz's own registrations are disabled: one MLflow hook, one Workflow recorder."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro_mlflow.framework.hooks import MlflowHook
    from kedro_viz.integrations.kedro.hooks import DatasetStatsHook
    from kedro_viz.integrations.kedro.run_hooks import PipelineRunStatusHook

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT) as session:
        plugins = session._hook_manager.get_plugins()
    assert [type(p) for p in plugins if isinstance(p, MlflowHook)] == [ProjectMlflowHook]
    assert [type(p) for p in plugins if isinstance(p, PipelineRunStatusHook)] == [MainJobWorkflow]
    assert len([p for p in plugins if isinstance(p, DatasetStatsHook)]) == 1


def test_the_workflow_view_records_whole_runs_of_the_main_job_only():
    for main in ({"pipeline_names": ["full"]}, {"pipeline_names": None}, {"pipeline_names": ["__default__"]}):
        assert is_main_job(main)
    for other in ({"pipeline_names": ["postprocess"]}, {"pipeline_names": ["full", "synthetic"]},
                  {"pipeline_names": ["full"], "namespaces": ["HUVEC"]},
                  {"pipeline_names": ["full"], "from_nodes": ["train.HUVEC.train_model"]},
                  {"pipeline_names": ["full"], "only_missing_outputs": True}):
        assert not is_main_job(other)
    from kedro.pipeline import Pipeline

    sequential = "<kedro.runner.sequential_runner.SequentialRunner object at 0x1>"
    recorder = MainJobWorkflow()
    recorder.before_pipeline_run({"pipeline_names": ["full"], "runner": sequential}, pipeline=Pipeline([]))
    assert recorder._should_collect_events and [e["event"] for e in recorder._events] == ["before_pipeline_run"]
    recorder.before_pipeline_run({"pipeline_names": ["postprocess"], "runner": sequential}, pipeline=Pipeline([]))
    assert not recorder._should_collect_events and recorder._events == []  # the main job's record is kept
    threads = "<kedro.runner.thread_runner.ThreadRunner object at 0x1>"
    recorder.before_pipeline_run({"pipeline_names": ["full"], "runner": threads}, pipeline=Pipeline([]))
    assert not recorder._should_collect_events  # kedro-viz records sequential runs only


def test_a_tracked_run_logs_settings_and_tags_that_say_what_they_hold(project_copy):
    """A tiny tracked run (`synthetic`, tracked for the test), started from notebooks/ through the CLI, into a
    store whose experiment exists already with the GenAI kind."""
    mlflow = pytest.importorskip("mlflow")
    shrink_project(project_copy)
    conf = project_copy / "conf/base/mlflow.yml"
    config = yaml.safe_load(conf.read_text())
    config["tracking"]["disable_tracking"]["pipelines"] = []
    conf.write_text(yaml.safe_dump(config))
    store = f"sqlite:///{project_copy / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    experiment = client.create_experiment("synthetic", artifact_location=(project_copy / "mlruns/1").as_uri(),
                                          tags={"mlflow.experimentKind": "genai_development"})
    (project_copy / "notebooks").mkdir()

    result = kedro_run(project_copy / "notebooks", "--pipelines=synthetic", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    assert not (project_copy / "notebooks/mlflow.db").exists()
    [run] = client.search_runs([experiment])
    assert client.get_experiment(experiment).tags["mlflow.experimentKind"] == EXPERIMENT_KIND[
        "mlflow.experimentKind"]
    params = run.data.params
    assert params["synthetic.image_size"] == "16" and params["synthetic.experiments.train"] == "3"
    assert not [name for name in params if not name.startswith("synthetic.")]  # no `synthetic` repr beside them
    page = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run.info.run_id}?workflowType=machine_learning"
    assert page in result.stdout + result.stderr  # the run ends by saying where to see it, in the runs view
    tags = run.data.tags
    assert "run_id" not in tags and len(tags["kedro.session_id"]) > 10
    assert tags["pipeline_names"] == "['synthetic']"
    assert (project_copy / ".viz/stats.json").is_file()  # kedro viz's dataset statistics are still recorded
    assert not (project_copy / ".viz/kedro_pipeline_events.json").exists()  # not the main job: Workflow unchanged


def test_no_block_reaches_kedro_mlflow_as_a_model():
    from rxrx1_pipeline.runs.plugin_hooks import plain_parameters
    from rxrx1_pipeline.schema import Synthetic

    settings = yaml.safe_load((ROOT / "conf/base/parameters_synthetic.yml").read_text())["synthetic"]
    block = Synthetic.model_validate(settings)
    plain = plain_parameters({"params:synthetic": block, "params:seed": 3, "wells": block})
    assert plain["params:synthetic"] == block.model_dump(mode="json") and plain["params:seed"] == 3
    assert plain["wells"] is block  # only parameters are logged; data passes untouched
