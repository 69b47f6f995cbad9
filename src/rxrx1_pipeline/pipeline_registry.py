"""Explicit pipeline registry (kedro >= 1.5 selective loading breaks find_pipelines composites)."""

import logging
import warnings

from kedro.pipeline import Pipeline
from kedro_mlflow.pipeline.pipeline_ml import KedroMlflowPipelineMLError, PipelineML

from rxrx1_pipeline.pipelines import (
    inference,
    ingest,
    plate_groups,
    postprocess,
    report,
    score,
    synthetic,
    train,
)

# How a `full` run logs its scoring model (kedro-mlflow's mlflow.pyfunc.log_model arguments). Its parameters are
# the project's typed settings, which an MLflow signature cannot describe, so none is logged.
SCORING_MODEL_LOGGING = {"name": "scoring_model", "signature": None}
# What the scoring model runs on besides this project (installed at the run's commit: README), pinned to this
# environment's versions. MLflow's own inference of them misses most (torch, kedro, ...): they are imported lazily.
SCORING_MODEL_PACKAGES = ("kedro", "kedro-datasets", "kedro-mlflow", "mlflow", "torch", "timm", "numpy", "pandas",
                          "pyarrow", "scipy", "pillow", "pydantic", "tqdm")

log = logging.getLogger(__name__)

# Cross-namespace nodes read e.g. "HUVEC.test_logits"; kedro warns once per process about the dot.
warnings.filterwarnings("ignore", message="One or more dataset names contain", category=UserWarning)
# In the `train` pipeline the shared model of every cell line reads each line's inputs and feeds each line's
# fine-tuning, so a path leaves a cell line's namespace and comes back: kedro 1.x warns that the namespace
# is "interrupted" (it could not be deployed as one unit). Runs and `--namespaces` are unaffected. kedro viz
# draws `train` without layers (a line's box reads the shared model and feeds it, a cycle of layers); `full`
# puts the inputs and the models in two stages, so its DAG keeps them.
warnings.filterwarnings("ignore", message="Namespace '.*' is interrupted by nodes", category=UserWarning)


class FullPipeline(PipelineML):
    """``full`` with its scoring model: kedro-mlflow's PipelineML (what its ``pipeline_ml_factory`` builds). A
    filtered run (``--namespaces``, ``--from-nodes``, the resume command Kedro prints after a failure) that does
    not produce every input of the scoring pipeline runs as a plain pipeline and logs no scoring model, instead
    of being refused."""

    @property
    def log_model_kwargs(self) -> dict:
        """The logging arguments with the packages pinned (looked up when a run of ``full`` starts, not by every
        kedro command)."""
        from importlib.metadata import version

        return {**self._logging, "pip_requirements": [f"{name}=={version(name)}" for name in SCORING_MODEL_PACKAGES]}

    @log_model_kwargs.setter
    def log_model_kwargs(self, kwargs: dict) -> None:
        self._logging = kwargs

    # kedro viz splits `full` into each namespace it draws and the rest (76 calls at start). kedro-mlflow answers
    # with plain Pipelines, as here, but warns at each call that the result is no longer a PipelineML.
    def only_nodes_with_namespaces(self, node_namespaces: list[str]) -> Pipeline:
        """The nodes of ``node_namespaces``, as a plain Pipeline."""
        return self.training.only_nodes_with_namespaces(node_namespaces)

    def __sub__(self, other: Pipeline) -> Pipeline:
        """The nodes not in ``other``, as a plain Pipeline."""
        return self.training - other

    def filter(self, *args, **kwargs) -> Pipeline:
        try:
            return super().filter(*args, **kwargs)
        except KedroMlflowPipelineMLError:
            log.warning("A part of `full` runs: no scoring model is logged (it needs the outputs of every stage)")
            return self.training.filter(*args, **kwargs)


def register_pipelines() -> dict[str, Pipeline]:
    """Map pipeline names to pipelines."""
    pipes = {
        "synthetic": synthetic.create_pipeline(),
        "ingest": ingest.create_pipeline(),
        "plate_groups": plate_groups.create_pipeline(),
        "train": train.create_pipeline(),
        "inference": inference.create_pipeline(),
        "postprocess": postprocess.create_pipeline(),
        "report": report.create_pipeline(),
    }
    full = sum((stage(name, pipe) for name, pipe in (
        ("ingest", pipes["ingest"]),
        ("plate_groups", pipes["plate_groups"]),
        ("model_input", train.create_inputs_pipeline()),
        ("train", train.create_training_pipeline()),
        ("inference", pipes["inference"]),
        ("postprocess", pipes["postprocess"]),
        ("report", pipes["report"]),
    )), start=Pipeline([]))
    # A run of `full` ends by logging the scoring pipeline with this run's models and artefacts as an MLflow model.
    full = FullPipeline(full.nodes, inference=score.create_pipeline(), input_name=score.INPUT,
                        log_model_kwargs=SCORING_MODEL_LOGGING)
    # kedro viz files a node shared by several pipelines under the namespace of the first one listed here.
    return {"__default__": full, "full": full, **pipes}


def stage(name: str, pipe: Pipeline) -> Pipeline:
    """``pipe`` grouped under the namespace ``name``, dataset names unchanged.

    kedro viz draws each namespace as one collapsed box, so the ``full`` DAG reads as seven stages; the
    per-cell-line namespaces nest inside ``model_input``, ``train`` and ``inference`` (node names like
    ``train.HUVEC.train_model``).
    """
    return Pipeline(pipe, namespace=name, prefix_datasets_with_namespace=False)
