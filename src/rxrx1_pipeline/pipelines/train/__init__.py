"""The train pipeline: each cell line's model inputs, the shared model and each cell line's model."""

from .pipeline import create_inputs_pipeline, create_pipeline, create_training_pipeline

__all__ = ["create_inputs_pipeline", "create_pipeline", "create_training_pipeline"]
