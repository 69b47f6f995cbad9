#!/usr/bin/env bash
# Set up and run the test suite. pytest exit 5 (no tests collected) is a failure here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export KEDRO_DISABLE_TELEMETRY=1
set +e
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing on purpose" >&2
    exit 1
fi
exit "$rc"
