#!/usr/bin/env bash
# The whole test suite on this machine: install, make sure the services answer, lint, test.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

bash deploy/services.sh

.venv/bin/ruff check .
.venv/bin/mypy api shared workers
.venv/bin/pytest -q "$@"
