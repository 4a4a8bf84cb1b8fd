"""`chorus up` on embedded defaults (SQLite file): prints a working curl line and a key,
restarts a process that dies while the others serve on, and stops every process it
started on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.procstat import tree_pids
from tests.procs import ROOT, free_port
from tests.stack import claim_redis_db, release_redis_db


@pytest.fixture
def redis_url() -> Iterator[str]:
    url, token = claim_redis_db()
    yield url
    release_redis_db(url, token)


def test_up_prints_a_working_curl_and_stops_cleanly(tmp_path: Path, redis_url: str) -> None:
    port, mock_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
    env.update(CHORUS_DATA_DIR=str(tmp_path), CHORUS_REDIS_URL=redis_url,
               CHORUS_MOCK_PORT=str(mock_port), WEB_CONCURRENCY="1",
               CHORUS_WORKER_CONCURRENCY="20")
    chorus = Path(sys.executable).parent / "chorus"
    proc = subprocess.Popen([str(chorus), "up", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline and not any(ln.startswith("CHORUS_KEY=")
                                                      for ln in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        out = "\n".join(lines)
        url = re.search(r"^CHORUS_URL=(\S+)$", out, re.M)
        key = re.search(r"^CHORUS_KEY=(ch_sk_\S+)$", out, re.M)
        assert url and key, out[-3000:]
        assert url.group(1) == f"http://127.0.0.1:{port}"
        assert (tmp_path / "chorus.db").exists()
        curl = next(ln.strip() for ln in lines if ln.strip().startswith("curl "))
        streamed = subprocess.run(curl, shell=True, capture_output=True, text=True,
                                  timeout=60).stdout
        assert "data: [DONE]" in streamed, streamed[-2000:]
        assert '"status":"succeeded"' in streamed
        children = tree_pids(proc.pid)
        assert len(children) >= 5  # chorus, web (master + worker), worker, beat, mock
    finally:
        os.killpg(proc.pid, signal.SIGTERM) if proc.poll() is None else None
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    time.sleep(0.5)
    alive = [p for p in children if Path(f"/proc/{p}").exists()
             and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
    assert alive == []


def test_keys_create_prints_the_key_last(tmp_path: Path) -> None:
    env = dict(os.environ, CHORUS_DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}")
    chorus = Path(sys.executable).parent / "chorus"
    out = subprocess.run([str(chorus), "keys", "create", "--account", "acme", "--credits",
                          "1000", "--tier", "paid"], env=env, capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()
    assert re.fullmatch(r"ch_sk_[A-Za-z0-9_-]{40,}", out[-1])
    bad = subprocess.run([str(chorus), "keys", "create", "--account", "acme", "--credits",
                          "-5"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def worker_pids(root: int) -> list[int]:
    """The interactive Celery workers under ``root``."""
    found = []
    for pid in tree_pids(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and b"interactive" in argv:
            found.append(pid)
    return found


def test_up_restarts_a_killed_worker_while_the_api_answers(
    tmp_path: Path, redis_url: str
) -> None:
    port, mock_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
    env.update(CHORUS_DATA_DIR=str(tmp_path), CHORUS_REDIS_URL=redis_url,
               CHORUS_MOCK_PORT=str(mock_port), WEB_CONCURRENCY="1",
               CHORUS_WORKER_CONCURRENCY="20", CHORUS_DRAIN_S="3")
    chorus = Path(sys.executable).parent / "chorus"
    proc = subprocess.Popen([str(chorus), "up", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("CHORUS_KEY="):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(90), "\n".join(lines[-50:])
        key = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("CHORUS_KEY="))
        base = f"http://127.0.0.1:{port}"
        body = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5}
        with httpx.Client(base_url=base, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as api:
            assert api.post("/api/v1/chat", json=body).status_code == 200
            [old] = worker_pids(proc.pid)
            killed = time.monotonic()
            os.kill(old, signal.SIGKILL)
            health: list[int] = []
            new: list[int] = []
            while not new:
                assert time.monotonic() - killed < 30, "\n".join(lines[-30:])
                health.append(api.get("/healthz").status_code)
                new = [p for p in worker_pids(proc.pid) if p != old]
                time.sleep(0.05)
            restarted = time.monotonic() - killed
            # Jobs run again once the new worker consumes.
            answer = api.post("/api/v1/chat", json=body)
            served = time.monotonic() - killed
        assert answer.status_code == 200 and answer.json()["status"] == "succeeded"
        assert health and set(health) == {200}
        assert any(re.search(r"worker +\| exited with signal 9 .* restarting in 1\.0 s", ln)
                   for ln in lines), "\n".join(lines[-30:])
        assert proc.poll() is None
        print(f"\nchorus up: SIGKILLed worker running again after {restarted:.2f} s, "
              f"serving jobs after {served:.2f} s; the API answered {len(health)} health "
              f"checks meanwhile")
        children = tree_pids(proc.pid)
        stopping = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        stopped = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0
    # Each process stopped of its own accord: none waited for the kill after drain + 10 s.
    assert stopped < 3 + 10, "\n".join(lines[-40:])
    assert not any("killed:" in ln for ln in lines), "\n".join(lines[-40:])
    alive = [p for p in children if Path(f"/proc/{p}").exists()
             and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
    assert alive == []
    print(f"chorus up: stopped in {stopped:.2f} s")
