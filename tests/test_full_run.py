"""End to end through the CLI on a tiny synthetic dataset: `synthetic`, then `full`, then `postprocess` alone;
then the exploration notebook executed headless on those outputs."""

from pathlib import Path

import numpy as np
import pandas as pd

from rxrx1_pipeline.images import ImageStore, read_site
from rxrx1_pipeline.pipelines.synthetic.nodes import render_sites
from rxrx1_pipeline.schema import Synthetic
from rxrx1_pipeline.tiny_project import shrink_project
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
               for cell_line in ("HEPG2", "HUVEC", "RPE", "U2OS"))  # all curves overlaid in one chart
    metrics = pd.read_parquet(data / "08_reporting/postprocess_metrics.parquet")
    assert set(metrics["level"]) == {"experiment", "cell_line", "overall"}
    assert "assigned" in (data / "08_reporting/postprocess_accuracy.json").read_text()
    logits = pd.read_parquet(data / "07_model_output/test_logits.parquet")
    assert len(logits) == len(test_wells) and logits.shape[1] == 1 + 4 * 4

    again = kedro_run(project_copy, "--pipelines=postprocess")
    assert again.returncode == 0, again.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(data / "08_reporting/submission.csv"), submission)
    _check_tracking(project_copy, metrics, histories=2)

    notebook = _execute_notebook(project_copy)
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "all " in text and "layout ok" in text  # the stage table
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the site composites
    assert "margin" in str(notebook.cells[-1].outputs)


def _check_tracking(project: Path, metrics: pd.DataFrame, histories: int) -> None:
    """The MLflow store holds the full run (curves, stage metrics, files) and then the postprocess run."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthetic")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [run.info.run_name for run in runs] == ["full", "postprocess"]
    full = runs[0]
    assert full.info.status == "FINISHED"
    overall = metrics.set_index("name").loc["all"]
    for stage in ("raw", "masked", "assigned"):
        assert full.data.metrics[f"valid.all.{stage}"] == overall[stage]
    assert [m.step for m in client.get_metric_history(full.info.run_id, "HUVEC.loss")] == list(range(1, histories + 1))
    assert full.data.params["HUVEC.training.epochs"] == str(histories)
    files = {Path(a.path).name for a in client.list_artifacts(full.info.run_id)}
    assert {"submission.csv", "report.html", "training_curves.json"} <= files
    assert not {m for m in runs[1].data.metrics if m.endswith(".loss")}  # postprocess alone trains nothing


def _execute_notebook(project: Path):
    """Run notebooks/explore_outputs.ipynb in a fresh kernel inside ``project`` (fails on any cell error)."""
    import nbformat
    from nbclient import NotebookClient

    (project / "notebooks").mkdir(exist_ok=True)
    notebook = nbformat.read(ROOT / "notebooks" / "explore_outputs.ipynb", as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(project / "notebooks")}}).execute()
    return notebook
