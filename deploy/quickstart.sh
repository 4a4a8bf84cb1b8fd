#!/usr/bin/env bash
# Install Chorus into .venv and start the whole stack (API, worker, beat, mock provider).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
exec .venv/bin/chorus up "$@"
