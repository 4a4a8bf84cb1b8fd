#!/usr/bin/env bash
# Install Chorus into .venv and start the whole stack (API, worker, beat, mock provider).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Exactly the locked runtime versions, hash-checked; then the project without dependencies.
PIP=(.venv/bin/python -m pip --quiet --disable-pip-version-check)
"${PIP[@]}" install --require-hashes -r requirements.lock
"${PIP[@]}" install --no-deps -e .
exec .venv/bin/chorus up "$@"
