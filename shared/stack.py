"""``chorus up``: the Procfile's processes in the foreground on one machine's defaults,
supervised (``shared/supervise.py``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis

ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(L)ss'


def read_procfile(path: Path) -> dict[str, str]:
    """A Procfile's commands by process name, as the shell would get them."""
    procs: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            name, cmd = line.split(":", 1)
            procs[name.strip()] = cmd.strip()
    return procs


def commands(env: Mapping[str, str]) -> dict[str, list[str]]:
    """The Procfile's processes, built here so that an installed package needs no source
    tree; each runs on this interpreter (``python -m``), so it finds the project."""

    def var(name: str, default: str) -> str:
        return env.get(name) or default

    py = sys.executable
    celery = [py, "-m", "celery", "--app", "workers.app"]
    level = var("CHORUS_LOG_LEVEL", "warning")
    worker = [*celery, "worker", "--pool", "gevent", "--concurrency",
              var("CHORUS_WORKER_CONCURRENCY", "200")]
    quiet = ["--without-gossip", "--without-mingle", "--loglevel", level]
    return {
        "web": [py, "-m", "gunicorn", "--config", "python:api.gunicorn_conf",
                "--workers", var("WEB_CONCURRENCY", "2"),
                "--bind", f"{var('CHORUS_BIND', '127.0.0.1')}:{var('PORT', '8000')}",
                "--access-logfile", "-", "--access-logformat", ACCESS_LOG_FORMAT,
                "api.app:create_app()"],
        "worker": [*worker, "--queues", "interactive", *quiet],
        "batch": [*worker, "--queues", "batch", *quiet, "--hostname", "batch@%h"],
        "beat": [*celery, "beat", "--loglevel", level,
                 "--schedule", f"{var('CHORUS_DATA_DIR', 'var')}/celerybeat-schedule"],
        "mock": [py, "-m", "workers.providers.mock", "--port", var("CHORUS_MOCK_PORT", "8100")],
    }


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def ensure_redis(url: str, data_dir: Path) -> str:
    """Start a local redis-server when none answers at ``url``; return how it went."""
    if redis_answers(url):
        return "Redis answers at " + url
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost") or not shutil.which("redis-server"):
        raise SystemExit(f"Redis does not answer at {url} and cannot be started here")
    port = str(parsed.port or 6379)
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", port,
         "--save", "", "--appendonly", "no", "--dir", str(data_dir),
         "--logfile", str(data_dir / "redis.log")],
        check=True,
    )
    for _ in range(50):
        if redis_answers(url):
            return f"started redis-server on port {port}"
        time.sleep(0.1)
    raise SystemExit(f"redis-server did not come up on port {port}")


def dev_key(data_dir: Path) -> str:
    """The development key: reused from the data directory while it still works."""
    from shared import keys
    from shared.db import session_scope

    path = data_dir / "dev-key"
    with session_scope() as session:
        if path.exists():
            key = path.read_text().strip()
            if keys.lookup(session, key) is not None:
                return key
        from decimal import Decimal

        key = keys.create_key(session, "dev", credits=Decimal(100000), tier="paid", name="dev")
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def announce(base: str, key: str, stop: threading.Event, write: Callable[[str], None]) -> None:
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        return
    body = '{"model":"gpt-5.2","stream":true,"messages":[{"role":"user","content":"Hello!"}]}'
    # One write, between two of the processes' lines: the two machine-read lines must
    # each stand whole on a line of their own.
    write(
        "\nChorus is up.\n"
        f"  curl -N {base}/api/v1/chat -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' -d '{body}'\n\n"
        f"CHORUS_URL={base}\nCHORUS_KEY={key}\n\n"
    )


def up(port: int | None) -> int:
    from shared.migrate import upgrade
    from shared.settings import get_settings
    from shared.supervise import Supervisor, stop_on_signals

    env = dict(os.environ)
    if port is not None:
        env["PORT"] = str(port)
    data_dir = Path(env.setdefault("CHORUS_DATA_DIR", str(Path.cwd() / "var"))).resolve()
    env["CHORUS_DATA_DIR"] = str(data_dir)
    env.setdefault("CHORUS_DATABASE_URL", f"sqlite:///{data_dir / 'chorus.db'}")
    env.setdefault("CHORUS_REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setdefault("CHORUS_MOCK_PORT", "8100")
    env.setdefault("CHORUS_MOCK_URL", f"http://127.0.0.1:{env['CHORUS_MOCK_PORT']}")
    os.environ.update(env)
    get_settings.cache_clear()
    print(ensure_redis(env["CHORUS_REDIS_URL"], data_dir), flush=True)
    upgrade(env["CHORUS_DATABASE_URL"])
    key = dev_key(data_dir)
    base = f"http://127.0.0.1:{env.get('PORT', '8000')}"
    supervisor = Supervisor(commands(env), env=env, cwd=str(data_dir),
                            drain_s=get_settings().drain_s)
    stop_on_signals(supervisor)
    announced = threading.Event()
    threading.Thread(target=announce, args=(base, key, announced, supervisor.write),
                     daemon=True).start()
    try:
        return supervisor.run()
    finally:
        announced.set()
