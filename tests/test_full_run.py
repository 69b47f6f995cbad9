"""End to end through the CLI on a tiny synthetic dataset: `synthetic`, then `full`, then `postprocess` alone;
then the exploration notebook executed headless on those outputs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from rxrx1_pipeline.storage.images import ImageStore, read_site
from rxrx1_pipeline.pipelines.synthetic.nodes import render_sites
from rxrx1_pipeline.schema import Synthetic
from tests.tiny_project import shrink_project
from tests.conftest import ROOT, kedro_run


def test_synthetic_then_full_then_postprocess(project_copy: Path):
    synthetic = shrink_project(project_copy)
    for args in (["--pipelines=synthetic"], ["--pipelines=full"]):
        result = kedro_run(project_copy, *args, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    data = project_copy / "data"
    raw = data / "01_raw/synthetic"
    wells = pd.read_parquet(data / "02_intermediate/wells.parquet")
    sites = pd.read_parquet(data / "02_intermediate/sites.parquet")
    truth = pd.read_parquet(data / "01_raw/synthetic_truth.parquet")
    assert len(wells) == len(truth) and set(wells["id_code"]) == set(truth["id_code"])
    assert len(sites) == 2 * len(wells)
    # the PNG tree and sites.parquet agree both ways; a site reads back exactly as rendered
    assert {str(p.relative_to(raw)) for p in raw.rglob("*.png")} == set(
        sites[[f"w{c}" for c in range(1, 7)]].to_numpy().ravel())
    prefix = sites["w1"].iloc[len(sites) // 2][: -len("_w1.png")]
    np.testing.assert_array_equal(read_site(raw, prefix), render_sites(truth, Synthetic.model_validate(synthetic))[prefix]())

    test_wells = wells[(wells["split"] == "test") & (wells["well_type"] == "treatment")]
    submission = pd.read_csv(data / "08_reporting/submission.csv")
    assert list(submission.columns) == ["id_code", "sirna"]
    assert sorted(submission["id_code"]) == sorted(test_wells["id_code"])
    for cell_line in ("HEPG2", "HUVEC", "RPE", "U2OS"):
        history = pd.read_parquet(data / f"08_reporting/{cell_line}/history.parquet")
        assert list(history["epoch"]) == [1, 2]
        assert (data / f"06_models/{cell_line}/model.pt").is_file()
        model_sites = pd.read_parquet(data / f"05_model_input/{cell_line}/sites.parquet")
        assert len(ImageStore(data / f"05_model_input/image_store/{cell_line}")) == len(model_sites)
    assert all(cell_line in (data / "08_reporting/training_curves.json").read_text()
               for cell_line in ("HEPG2", "HUVEC", "RPE", "U2OS"))  # every model's curves in the one chart
    metrics = pd.read_parquet(data / "08_reporting/postprocess_metrics.parquet")
    assert set(metrics["level"]) == {"experiment", "cell_line", "overall"}
    assert "assigned" in (data / "08_reporting/postprocess_accuracy.json").read_text()
    logits = pd.read_parquet(data / "07_model_output/test_logits.parquet")
    assert len(logits) == len(test_wells) and logits.shape[1] == 1 + 4 * 4

    identity = (data / "08_reporting/run_identity.json").read_text()
    assert json.loads(identity)["pipeline"] == ["full"] and json.loads(identity)["run"] in (
        data / "08_reporting/report.html").read_text()
    again = kedro_run(project_copy, "--pipelines=postprocess")
    assert again.returncode == 0, again.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(data / "08_reporting/submission.csv"), submission)
    # a run that builds no report leaves the report's header file as it was
    assert (data / "08_reporting/run_identity.json").read_text() == identity
    _check_tracking(project_copy, metrics, histories=2)
    _check_scoring_model(project_copy)

    notebook = _execute_notebook(project_copy)
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "all " in text and "layout ok" in text  # the stage table
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the site composites
    assert "margin" in str(notebook.cells[-1].outputs)


def test_the_release_layout_runs_end_to_end_and_reports_the_test_accuracy(project_copy: Path):
    """The tiny synthetic data written as the rxrx.ai release (metadata.csv with the test labels, images/) runs
    `full` from data_root as the Kaggle folder does, and the run prints and keeps the test accuracy per stage.
    Its test set holds no HEPG2 experiment (a lab scoring new plates of some lines): HEPG2's model still trains
    and is validated, and the submission holds the other lines' wells."""
    shrink_project(project_copy)
    conf = project_copy / "conf/base/parameters_synthetic.yml"
    params = yaml.safe_load(conf.read_text())
    params["synthetic"]["experiments"] = {line: {"train": 3, "test": 0 if line == "HEPG2" else 1}
                                          for line in params["synthetic"]["cell_lines"]}
    conf.write_text(yaml.safe_dump(params))
    made = kedro_run(project_copy, "--pipelines=synthetic", "--params=synthetic.layout=rxrx.ai", timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    raw = project_copy / "data/01_raw/synthetic"
    assert sorted(p.name for p in raw.iterdir()) == ["images", "metadata.csv"]
    result = kedro_run(project_copy, "--pipelines=full", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Test accuracy from the released labels" in result.stderr + result.stdout
    data = project_copy / "data"
    truth = pd.read_parquet(data / "01_raw/synthetic_truth.parquet").set_index("id_code")["sirna"]
    submission = pd.read_csv(data / "08_reporting/submission.csv")
    overall = pd.read_parquet(data / "08_reporting/test_metrics.parquet").set_index("name").loc["all"]
    assert overall["submission"] == (submission["sirna"] == truth[submission["id_code"]].to_numpy()).mean()
    assert overall["wells"] == len(submission) and not submission["id_code"].str.startswith("HEPG2").any()
    assert "No test wells of cell line(s) HEPG2" in result.stderr + result.stdout
    metrics = pd.read_parquet(data / "08_reporting/postprocess_metrics.parquet").set_index("name")
    assert "HEPG2" in metrics.index and (data / "06_models/HEPG2/model.pt").is_file()


def _check_tracking(project: Path, metrics: pd.DataFrame, histories: int) -> None:
    """The MLflow store holds the full run (curves, stage metrics, files) and then the postprocess run."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthetic")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [run.info.run_name for run in runs] == ["full", "postprocess"]
    full = runs[0]
    assert full.info.status == "FINISHED"
    assert full.data.tags["mlflow.source.git.commit"] == "unknown"  # the project copy is no git checkout
    overall = metrics.set_index("name").loc["all"]
    for stage in ("raw", "masked", "assigned"):
        assert full.data.metrics[f"valid.all.{stage}"] == overall[stage]
    assert [m.step for m in client.get_metric_history(full.info.run_id, "HUVEC.loss")] == list(range(1, histories + 1))
    assert full.data.params["HUVEC.training.epochs"] == str(histories)
    files = {Path(a.path).name for a in client.list_artifacts(full.info.run_id)}
    assert {"submission.csv", "report.html", "training_curves.json"} <= files
    assert not {m for m in runs[1].data.metrics if m.endswith(".loss")}  # postprocess alone trains nothing


# Loads the scoring model the `full` run logged, in a fresh process outside any Kedro session, and scores the
# test experiments of the synthetic folder (Kaggle layout) with it.
SCORE_TEST_EXPERIMENTS = """
import sys, mlflow
from rxrx1_pipeline.pipelines.score import experiment_sites
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(experiment_sites("data/01_raw/synthetic", split="test")).to_parquet("scored_wells.parquet")
"""


def _check_scoring_model(project: Path) -> None:
    """The `full` run's MLflow model reproduces the run's own test outputs exactly, loaded in a fresh process and
    served by `mlflow models serve`."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id],
                             filter_string="attributes.run_name = 'full'")[0]
    uri = f"runs:/{run.info.run_id}/scoring_model"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    loaded = subprocess.run([sys.executable, "-c", SCORE_TEST_EXPERIMENTS, uri], cwd=project, env=env,
                            capture_output=True, text=True, timeout=180)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    scored = pd.read_parquet(project / "scored_wells.parquet").set_index("id_code")
    out = project / "data/07_model_output"
    predictions = pd.read_parquet(out / "test_predictions.parquet").set_index("id_code")
    assert sorted(scored.index) == sorted(predictions.index)
    scored = scored.loc[predictions.index]
    for mine, theirs in (("sirna", "sirna_assigned"), ("sirna_masked", "sirna_masked"),
                         ("sirna_argmax", "sirna_argmax"), ("score", "score")):
        np.testing.assert_array_equal(scored[mine].to_numpy(), predictions[theirs].to_numpy())
    logits = pd.read_parquet(out / "test_logits.parquet").set_index("id_code")
    np.testing.assert_array_equal(scored.loc[logits.index, "logit_" + logits.columns].to_numpy(), logits.to_numpy())
    embeddings = pd.read_parquet(out / "test_embeddings.parquet").set_index("id_code")
    np.testing.assert_array_equal(scored.loc[embeddings.index, embeddings.columns].to_numpy(), embeddings.to_numpy())
    layouts = pd.read_parquet(out / "test_plate_groups.parquet").set_index("experiment")
    posterior = [c for c in layouts.columns if c.startswith("posterior_")]
    per_experiment = scored.groupby("experiment")[["layout", "layout_confidence", *posterior]].first()
    np.testing.assert_array_equal(per_experiment.loc[layouts.index, posterior].to_numpy(),
                                  layouts[posterior].to_numpy())
    assert list(per_experiment.loc[layouts.index, "layout"]) == list(layouts["layout"])
    _check_served(project, uri, env, scored)


def _check_served(project: Path, uri: str, env: dict, scored: pd.DataFrame) -> None:
    """`mlflow models serve` (local environment) answers one request with the same siRNA calls."""
    from rxrx1_pipeline.pipelines.score import experiment_sites

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", uri,
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], cwd=project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, "mlflow models serve exited"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping within 120 s"
                time.sleep(1)
        sites = experiment_sites((project / "data/01_raw/synthetic").resolve(), split="test")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         headers={"Content-Type": "application/json"},
                                         data=json.dumps({"dataframe_split": sites.to_dict(orient="split")}).encode())
        served = pd.DataFrame(json.loads(urllib.request.urlopen(request, timeout=120).read())["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert served.set_index("id_code").loc[scored.index, "sirna"].tolist() == scored["sirna"].tolist()


def _execute_notebook(project: Path):
    """Run notebooks/explore_outputs.ipynb in a fresh kernel inside ``project`` (fails on any cell error)."""
    import nbformat
    from nbclient import NotebookClient

    (project / "notebooks").mkdir(exist_ok=True)
    notebook = nbformat.read(ROOT / "notebooks" / "explore_outputs.ipynb", as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(project / "notebooks")}}).execute()
    return notebook


def test_a_data_set_of_one_cell_line_runs_the_readme_command(project_copy: Path):
    """Synthetic data of HUVEC alone: `kedro run --pipelines=full` trains HUVEC (the shared model on HUVEC only),
    gives the other lines no model, and submits HUVEC's test wells; then HUVEC alone from scratch, without any
    shared model file, as `--pipelines=train --namespaces=HUVEC` with init: scratch."""
    shrink_project(project_copy)
    made = kedro_run(project_copy, "--pipelines=synthetic", "--params=synthetic.cell_lines=[HUVEC]", timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    result = kedro_run(project_copy, "--pipelines=full", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr + result.stdout
    assert "No wells of cell line(s) HEPG2, RPE, U2OS in this data set: they get no model" in log
    assert "shared model: no sites of HEPG2, RPE, U2OS in this data set: trained on HUVEC only" in log
    data = project_copy / "data"
    submission = pd.read_csv(data / "08_reporting/submission.csv")
    assert len(submission) and submission["id_code"].str.startswith("HUVEC-").all()
    metrics = pd.read_parquet(data / "08_reporting/postprocess_metrics.parquet")
    assert set(metrics.loc[metrics["level"] == "cell_line", "name"]) == {"HUVEC"}
    import torch

    assert torch.load(data / "06_models/HEPG2/model.pt", weights_only=True) == {}
    (data / "06_models/shared/model.pt").unlink()
    alone = kedro_run(project_copy, "--pipelines=train", "--namespaces=HUVEC", "--params=HUVEC.training.init=scratch",
                      timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "HUVEC epoch 2/2" in alone.stderr + alone.stdout
