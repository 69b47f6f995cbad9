#!/usr/bin/env bash
# Create .venv (once) and install the project with the pinned versions of constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
if [ ! -f "$stamp" ]; then
    # PyTorch's Linux wheels on PyPI bring CUDA libraries: a first install takes about 7 GiB.
    need_kib=$((8 * 1024 * 1024))
    free_kib=$(df -Pk . | awk 'NR == 2 {print $4}')
    if ! compgen -G ".venv/lib/python*/site-packages/torch" >/dev/null && [ "$free_kib" -lt "$need_kib" ]; then
        echo "scripts/setup.sh: installing into $(pwd)/.venv needs about 8 GiB free, but only" \
             "$((free_kib / 1024)) MiB are free on its disk: free some space and run it again" >&2
        exit 1
    fi
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
    rm -f .venv/.installed-* && touch "$stamp"
fi
