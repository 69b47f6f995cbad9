"""The scoring pipeline: a trained run's inference side, logged as an MLflow model that scores new experiments.
Its input table is built with :func:`experiment_sites` (``sites.py``)."""

from .pipeline import INPUT, create_pipeline
from .sites import ScoringInputError, check_new_sites, experiment_sites

__all__ = ["INPUT", "ScoringInputError", "check_new_sites", "create_pipeline", "experiment_sites"]
