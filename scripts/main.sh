#!/usr/bin/env bash
# Set up, generate the synthetic default dataset if missing, and run the full pipeline on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export KEDRO_DISABLE_TELEMETRY=1
# The image folders appear only once generation has finished (see SiteImagesDataset.save).
if [ ! -f data/01_raw/synthetic/train.csv ] || [ ! -d data/01_raw/synthetic/test ]; then
    .venv/bin/kedro run --pipelines=synthetic
fi
.venv/bin/kedro run --pipelines=full "$@"
echo "Report: $(pwd)/data/08_reporting/report.html (open it in a browser)."
echo "This run in MLflow: source .venv/bin/activate && kedro mlflow ui, then the address in the log line above (or http://127.0.0.1:5000)."
