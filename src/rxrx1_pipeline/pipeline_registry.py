"""Explicit pipeline registry (kedro >= 1.5 selective loading breaks find_pipelines composites)."""

import warnings

from kedro.pipeline import Pipeline

from rxrx1_pipeline.pipelines import (
    inference,
    ingest,
    plate_groups,
    postprocess,
    report,
    synthetic,
    train,
)

# Cross-namespace nodes read e.g. "HUVEC.test_logits"; kedro warns once per process about the dot.
warnings.filterwarnings("ignore", message="One or more dataset names contain", category=UserWarning)


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
    pipes["full"] = (pipes["ingest"] + pipes["plate_groups"] + pipes["train"] + pipes["inference"]
                     + pipes["postprocess"] + pipes["report"])
    pipes["__default__"] = pipes["full"]
    return pipes
