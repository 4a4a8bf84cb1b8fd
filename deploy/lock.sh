#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml: requirements-dev.lock (runtime and dev)
# first, then requirements.lock (runtime) at the same versions. Pins already in the locks
# are kept unless asked: pass --upgrade-package NAME to move one package, --upgrade for all.
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-.venv/bin/uv}
# Universal: one lock for every platform and Python the project supports (markers decide).
opts=(--universal --python-version 3.11 --generate-hashes --quiet
      --custom-compile-command "bash deploy/lock.sh")
"$UV" pip compile pyproject.toml --extra dev "${opts[@]}" "$@" -o requirements-dev.lock
"$UV" pip compile pyproject.toml -c requirements-dev.lock "${opts[@]}" -o requirements.lock
