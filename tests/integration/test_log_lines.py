"""Nothing a caller sends is written raw into the API's log: an API process started from
the Procfile's own ``web`` line (its access log format, with the decoded path ``%(U)s``
added) gets CR, LF and NUL in paths and queries, and no line of its log is forged."""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.stack import read_procfile
from tests.procs import ROOT, free_port, start, stop, wait_http
from tests.stack import Stack

ACCESS_LINE = '127.0.0.1 "GET /forged HTTP/1.1" 200 0.000001s'
APP_LINE = "[2026-01-01 00:00:00 +0000] [1] [CRITICAL] forged"
FORGERIES = [
    # A whole access line after CRLF in a path parameter.
    "/api/v1/jobs/x%0D%0A" + ACCESS_LINE.replace(" ", "%20").replace('"', "%22"),
    # An application line after NUL + LF in a session id (this one was a 500, logged).
    "/api/v1/budgets/sessions/s%00%0A" + APP_LINE.replace(" ", "%20"),
    # LF in a query value, then a bare LF in the path of a route that does not exist.
    "/api/v1/usage?model=%0Aforged",
    "/nothing%0Aforged",
]


@pytest.fixture
def procfile_api(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    command = read_procfile(ROOT / "Procfile")["web"]
    words = shlex.split(command)
    access_format = words[words.index("--access-logformat") + 1]
    # A later option wins: the Procfile's format, plus the path as gunicorn decodes it.
    command += " --access-logformat " + shlex.quote(access_format + " %(U)s")
    port = free_port()
    log = tmp_path / "web.log"
    env = dict(stack.env, PORT=str(port), CHORUS_BIND="127.0.0.1", WEB_CONCURRENCY="1")
    proc = start(["sh", "-c", command], env, log, module=False)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc, log)
        yield url, log
    finally:
        stop(proc)


def wait_lines(log: Path, needle: str, count: int, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text(errors="replace").split("\n")
        # The start-up probe's own access line does not count.
        if sum(needle in line and "/healthz" not in line for line in lines) >= count:
            return lines
        assert time.monotonic() < deadline, "\n".join(lines[-40:])
        time.sleep(0.05)


def test_no_log_line_can_be_forged(
    procfile_api: tuple[str, Path], stack: Stack, key: str
) -> None:
    url, log = procfile_api
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        for path in FORGERIES:
            assert client.get(path).status_code in (400, 404)
    lines = wait_lines(log, '"GET /', len(FORGERIES))
    raw = log.read_bytes()
    assert b"\x00" not in raw and b"\r" not in raw
    for line in lines:
        assert not line.startswith((ACCESS_LINE, APP_LINE, "forged")), line
    assert not any(line.startswith("Traceback") for line in lines)
    # The decoded path is in the access line, escaped: proof the atom was written at all.
    assert any("/api/v1/jobs/x\\r\\n127.0.0.1" in line for line in lines)
    assert any("/nothing\\nforged" in line for line in lines)
