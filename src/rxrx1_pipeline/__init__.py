"""RxRx1 siRNA pipeline: from the raw competition folder to a Kaggle submission."""

__version__ = "0.1.0"
