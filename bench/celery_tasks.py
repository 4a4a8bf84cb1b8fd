"""What Celery itself costs a gevent worker per task, on the broker transport Chorus uses
and on kombu's stock Redis transport, measured side by side in one run.

A real Celery gevent worker runs no-op tasks from Chorus' own app settings; the numbers
are the worker process' CPU seconds (from /proc) over the tasks it ran, so they hold the
consumer, the acknowledgement and (for chord headers) the chord's join, and nothing of
Chorus' own task code. Each variant runs twice, interleaved, so drift hits both alike.

    .venv/bin/python -m bench.celery_tasks [--chords 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import redis
from celery import Celery, chord, group, shared_task

from bench import procstat
from shared.settings import Settings
from tests.stack import claim_redis_db, release_redis_db
from workers.app import make_celery

SIZE = 9  # headers per chord, as a compare of nine models
VARIANTS = {"shared client (Chorus)": "", "stock kombu transport": "redis"}


def make_app() -> Celery:
    """Chorus' Celery settings with the bench's no-op tasks (the worker imports this)."""
    url = os.environ["CHORUS_REDIS_URL"]
    app = make_celery(Settings(redis_url=url, broker_url=url))
    app.conf.include = []
    if os.environ.get("CHORUS_BENCH_TRANSPORT"):
        app.conf.broker_transport = os.environ["CHORUS_BENCH_TRANSPORT"]
    return app


# The worker's app (``--app bench.celery_tasks``); the benchmark sends tasks by name.
app: Celery | None = make_app() if "CHORUS_REDIS_URL" in os.environ else None


@shared_task(name="bench.noop", ignore_result=True)
def noop(x: int) -> int:
    return x


@shared_task(name="bench.body", ignore_result=True)
def body(_results: Any) -> None:
    return None


def drain(client: redis.Redis) -> None:
    """Wait until the worker has taken every message and acknowledged it."""
    while client.llen("interactive") or client.hlen("unacked"):
        time.sleep(0.2)
    time.sleep(0.5)


def run(sender: Celery, kind: str, n: int) -> None:
    for _ in range(n):
        tasks = [sender.signature("bench.noop", args=(1,), queue="interactive", immutable=True)
                 for _ in range(SIZE)]
        if kind == "chord header":
            chord(tasks, sender.signature("bench.body", queue="interactive")).apply_async()
        else:
            group(tasks).apply_async()


def measure(sender: Celery, url: str, transport: str, chords: int) -> dict[str, float]:
    env = dict(os.environ, CHORUS_REDIS_URL=url, CHORUS_BENCH_TRANSPORT=transport)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "--app", "bench.celery_tasks", "worker", "--pool",
         "gevent", "--concurrency", "100", "--queues", "interactive", "--without-gossip",
         "--without-mingle", "--loglevel", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis.from_url(url)
    try:
        time.sleep(4)  # started and consuming
        out = {}
        for kind in ("plain task", "chord header"):
            run(sender, kind, 20)  # warm
            drain(client)
            before = procstat.cpu_seconds([worker.pid])
            run(sender, kind, chords)
            drain(client)
            after = procstat.cpu_seconds([worker.pid])
            out[kind] = (after - before) * 1000 / (chords * SIZE)
        return out
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chords", type=int, default=200)
    args = ap.parse_args()
    url, token = claim_redis_db()
    os.environ["CHORUS_REDIS_URL"] = url
    os.environ.pop("CHORUS_BENCH_TRANSPORT", None)
    sender = make_app()
    results: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    try:
        for _ in range(2):
            for name, transport in VARIANTS.items():
                for kind, ms in measure(sender, url, transport, args.chords).items():
                    results[name].setdefault(kind, []).append(ms)
    finally:
        release_redis_db(url, token)
    print("| transport | plain task: worker CPU ms | chord header (body / 9 included): "
          "worker CPU ms |")
    print("|---|---|---|")
    for name, kinds in results.items():
        cells = [f"{statistics.median(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})"
                 for v in kinds.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
