"""A real Chorus stack for integration tests: its own PostgreSQL database and Redis db,
the mock provider, a gunicorn+gevent API and Celery gevent workers, all as processes."""

from __future__ import annotations

import math
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg2
import redis

from tests.procs import free_port, start, stop, wait_http

PG_ADMIN = os.environ.get("CHORUS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("CHORUS_TEST_REDIS", "redis://127.0.0.1:6379")


def create_pg_database() -> str:
    name = f"chorus_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    server = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")
    return f"{server}/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def claim_redis_db() -> tuple[str, str]:
    """A Redis database number no other test session uses (Celery queues live there)."""
    admin = redis.Redis.from_url(f"{REDIS_BASE}/0")
    token = uuid.uuid4().hex
    for n in range(1, 16):
        if admin.set(f"chorus:test-db-lock:{n}", token, nx=True, ex=1800):
            url = f"{REDIS_BASE}/{n}"
            redis.Redis.from_url(url).flushdb()
            return url, token
    raise RuntimeError("every Redis database is claimed by another test session")


def release_redis_db(url: str, token: str) -> None:
    n = url.rsplit("/", 1)[1]
    admin = redis.Redis.from_url(f"{REDIS_BASE}/0")
    redis.Redis.from_url(url).flushdb()
    if admin.get(f"chorus:test-db-lock:{n}") == token.encode():
        admin.delete(f"chorus:test-db-lock:{n}")


@dataclass
class Stack:
    url: str
    mock_url: str
    database_url: str
    redis_url: str
    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_api(self, name: str = "web", workers: int = 1,
                  env: dict[str, str] | None = None) -> str:
        """Start an API process; ``env`` overrides single variables of the stack's env."""
        port = free_port()
        log = self.logs / f"{name}.log"
        env = {**self.env, **(env or {})}
        # The API's own gunicorn settings (its drain), with a short drain unless asked.
        proc = start(
            ["gunicorn", "--config", "python:api.gunicorn_conf", "--workers", str(workers),
             "--bind", f"127.0.0.1:{port}",
             "--graceful-timeout", str(math.ceil(float(env.get("CHORUS_DRAIN_S", 2)))),
             "api.app:create_app()"],
            env, log,
        )
        self.procs[name] = proc
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", proc, log)
        return url

    def start_worker(self, name: str = "worker", concurrency: int = 100,
                     env: dict[str, str] | None = None, loglevel: str = "info",
                     queues: str = "interactive,batch") -> None:
        """Start a Celery worker; at ``info`` (which logs every task) wait until it
        consumes, else until its banner is out (it consumes a moment later)."""
        log = self.logs / f"{name}.log"
        proc = start(
            ["celery", "--app", "workers.app", "worker", "--pool", "gevent", "--concurrency",
             str(concurrency), "--queues", queues, "--without-gossip",
             "--without-mingle", "--loglevel", loglevel, "--hostname", f"{name}@%h"],
            {**self.env, **(env or {})}, log,
        )
        self.procs[name] = proc
        _wait_log(log, "ready" if loglevel.lower() in ("info", "debug") else "[queues]", proc)

    def stop_proc(self, name: str, sig: int | None = None) -> None:
        import signal

        proc = self.procs.pop(name)
        stop(proc, sig or signal.SIGTERM)

    def create_key(self, account: str | None = None, credits: Decimal | int = 1000,
                   tier: str = "paid", zero_retention: bool = False) -> str:
        from shared import keys
        from shared.db import session_scope

        with session_scope(self.database_url) as session:
            return keys.create_key(
                session, account or f"acct-{uuid.uuid4().hex[:8]}", credits=Decimal(credits),
                tier=tier, zero_retention=zero_retention,
            )

    def shutdown(self) -> None:
        for name in list(self.procs):
            self.stop_proc(name)


def _wait_log(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early:\n{log.read_text()[-4000:]}")
        if log.exists() and needle in log.read_text():
            return
        time.sleep(0.1)
    raise RuntimeError(f"no {needle!r} in {log} after {timeout}s:\n{log.read_text()[-4000:]}")
