#!/usr/bin/env bash
# The whole test suite on this machine: install, make sure the services answer, lint, test.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Exactly the locked versions, hash-checked; then the project itself, its dependencies
# already there. pip check fails if the lock no longer satisfies pyproject.toml.
PIP=(.venv/bin/python -m pip --quiet --disable-pip-version-check)
"${PIP[@]}" install --require-hashes -r requirements-dev.lock
"${PIP[@]}" install --no-deps -e .
"${PIP[@]}" check

bash deploy/services.sh

.venv/bin/ruff check .
.venv/bin/mypy api shared workers
.venv/bin/pytest -q "$@"
