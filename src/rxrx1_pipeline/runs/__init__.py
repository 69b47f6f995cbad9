"""Run safety and tracking: one run per output root (``locks``), the MLflow store checked and runs
closed whatever ends them (``tracking``), and the two-run final fit command (``final_fit``)."""
