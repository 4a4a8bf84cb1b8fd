"""Run a test script in a child Python process (one gevent patches as the API and the
workers are patched) and read the JSON object it prints last."""

from __future__ import annotations

import json
import os
import subprocess
import sys

DEFAULT_REDIS_URL = os.environ.get("CHORUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def run_json(script: str, *args: str, timeout: float = 60, **env: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", script, *args], env=dict(os.environ, **env),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result
