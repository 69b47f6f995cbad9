"""Project wiring: every dataset of every registered pipeline is a persisted catalog entry with a viz layer,
and no node reads the raw-data location from parameters."""

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import MemoryDataset

from tests.conftest import ROOT


def _pipelines_and_catalog():
    bootstrap_project(ROOT)
    from kedro.framework.project import pipelines

    with KedroSession.create(project_path=ROOT) as session:
        return dict(pipelines), session.load_context().catalog


def test_every_pipeline_dataset_is_persisted_and_layered():
    pipelines, catalog = _pipelines_and_catalog()
    assert {"synthetic", "ingest", "plate_groups", "train", "inference", "postprocess", "report", "full"} <= set(
        pipelines)
    not_persisted: dict[str, set[str]] = {}  # dataset -> pipelines using it
    no_layer = set()
    for name, pipe in pipelines.items():
        for ds in pipe.datasets():
            if ds.startswith("params:") or ds == "parameters":
                continue
            dataset = catalog.get(ds, fallback_to_runtime_pattern=True)
            if isinstance(dataset, MemoryDataset):
                not_persisted.setdefault(ds, set()).add(name)
            elif not (dataset.metadata or {}).get("kedro-viz", {}).get("layer"):
                no_layer.add(ds)
    assert not not_persisted, "datasets with no catalog entry (would be MemoryDatasets): " + "; ".join(
        f"{ds} (in {', '.join(sorted(p))})" for ds, p in sorted(not_persisted.items()))
    assert not no_layer, f"catalog entries without a kedro-viz layer: {sorted(no_layer)}"


def test_raw_images_come_from_the_catalog_only():
    pipelines, _ = _pipelines_and_catalog()
    params = {ds for pipe in pipelines.values() for ds in pipe.datasets() if ds.startswith("params:")}
    assert not [p for p in params if p.endswith("data_root")]
    readers = {n.name for n in pipelines["full"].nodes if "raw_site_images" in n.inputs}
    decoders = {f"model_input.{cl}.decode_sites" for cl in ("HEPG2", "HUVEC", "RPE", "U2OS")}
    assert readers == decoders | {"report.build_report"}


def test_full_reads_as_seven_stages_of_the_same_nodes():
    pipelines, _ = _pipelines_and_catalog()
    full = pipelines["full"]
    assert {n.namespace.split(".")[0] for n in full.nodes} == {"ingest", "plate_groups", "model_input", "train",
                                                                 "inference", "postprocess", "report"}
    parts = ("ingest", "plate_groups", "train", "inference", "postprocess", "report")
    assert full.datasets() == set().union(*(pipelines[p].datasets() for p in parts))  # names unchanged
    assert sorted(n.func.__name__ for n in full.nodes) == sorted(n.func.__name__ for p in parts
                                                                 for n in pipelines[p].nodes)


def test_full_logs_the_scoring_model_and_a_part_of_full_still_runs(caplog):
    from kedro_mlflow.pipeline.pipeline_ml import PipelineML

    pipelines, catalog = _pipelines_and_catalog()
    whole = pipelines["full"].filter()
    assert isinstance(whole, PipelineML) and whole.input_name == "new_sites"
    assert whole.inference.outputs() == {"scored_wells"}
    artefacts = whole.inference.inputs() - {"new_sites"}
    assert "HUVEC.model" in artefacts and "postprocess_calibration" not in artefacts  # it fits its own temperature
    assert artefacts <= whole.all_outputs() | whole.inputs() and "valid_logits" in artefacts
    from kedro.io import MemoryDataset

    files = [name for name in artefacts if not name.startswith("params:")]  # copied into the model: persisted
    assert files and not [name for name in files if isinstance(catalog[name], MemoryDataset)]
    assert all(getattr(catalog[name], "_filepath", None) for name in files)  # where kedro-mlflow finds them
    requirements = whole.log_model_kwargs["pip_requirements"]
    assert any(r.startswith("torch==") for r in requirements) and any(r.startswith("kedro==") for r in requirements)
    part = pipelines["full"].filter(node_namespaces=["postprocess"])
    assert not isinstance(part, PipelineML) and {n.namespace.split(".")[0] for n in part.nodes} == {"postprocess"}
    assert "no scoring model is logged" in caplog.text
