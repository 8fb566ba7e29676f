#!/usr/bin/env bash
# Core-install smoke test: a plain virtual environment (no system site-packages, no extras) with
# torch and `pip install -e .`, then every subcommand through .ci/smoke_core.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
unset PYTHONPATH
venv="${BSRN_SMOKE_VENV:-$(mktemp -d)/venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m pip install -q -e .
# Run from a folder outside the checkout's src/ shadowing: the venv's install is what is tested.
"$venv/bin/python" .ci/smoke_core.py
