"""The scoring pipeline: a trained run's inference side, logged as an MLflow model that scores new experiments."""

from .pipeline import INPUT, create_pipeline

__all__ = ["INPUT", "create_pipeline"]
