"""What one reconciler pass costs with many jobs waiting: the database read, the broker
read (every queued message), the lease and ticket reads, and the time Redis spends on it.

Stores ``--lines`` queued batch jobs (older than the grace) in a PostgreSQL database of
its own and their messages on the ``batch`` queue of a Redis database of its own, then
times passes that find every job delivered (so do nothing), and a pass with no job open.

    .venv/bin/python -m bench.reconcile_pass [--lines 10000] [--passes 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import insert, select

from shared import keys
from shared.db import session_scope
from shared.migrate import upgrade
from shared.settings import get_settings
from shared.tables import ApiKey, Job
from tests.stack import claim_redis_db, create_pg_database, drop_pg_database, release_redis_db


def _redis_usec(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {k: int(v["usec"]) for k, v in stats.items()}


def _fill(db_url: str, lines: int) -> list[str]:
    with session_scope(db_url) as s:
        keys.create_key(s, "bench", credits=Decimal(10))
        key = s.execute(select(ApiKey)).scalars().first()
        assert key is not None
        account, key_id = key.account_id, key.id
    ids = [str(uuid.uuid4()) for _ in range(lines)]
    old = datetime.now(UTC) - timedelta(minutes=5)
    body = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "Hi"}]}
    with session_scope(db_url) as s:
        s.execute(insert(Job), [
            {"id": i, "account_id": account, "key_id": key_id, "kind": "chat",
             "status": "queued", "queue": "batch", "request": body,
             "credits_reserved": Decimal(0), "created_at": old} for i in ids])
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    db_url = create_pg_database()
    redis_url, token = claim_redis_db()
    os.environ.update(CHORUS_DATABASE_URL=db_url, CHORUS_REDIS_URL=redis_url,
                      CHORUS_BROKER_URL=redis_url)
    get_settings.cache_clear()
    try:
        upgrade(db_url)
        from workers.app import make_celery
        from workers.messages import held
        from workers.reconciler import QUEUES, look, open_jobs, run_pass
        from workers.runtime import Runtime

        app = make_celery(get_settings())
        rt = Runtime(get_settings())
        client = redis.Redis.from_url(redis_url)

        empty = []
        for _ in range(args.passes):
            t0 = time.perf_counter()
            run_pass(rt, app)
            empty.append((time.perf_counter() - t0) * 1000)

        ids = _fill(db_url, args.lines)
        with app.producer_or_acquire() as producer:
            for job_id in ids:
                app.send_task("chorus.run_job", args=[job_id], queue="batch",
                              task_id=job_id, root_id=job_id, producer=producer)
        raw = client.lrange("batch", 0, -1)
        phases: dict[str, list[float]] = {"db": [], "broker": [], "leases": [], "pass": []}
        redis_ms: list[float] = []
        for _ in range(args.passes):
            now = datetime.now(UTC)
            t0 = time.perf_counter()
            jobs = open_jobs(now, 15.0)
            t1 = time.perf_counter()
            found = held(app, QUEUES, [j.id for j in jobs])
            t2 = time.perf_counter()
            look(app, client, [])  # nothing
            seen = look(app, client, jobs)
            t3 = time.perf_counter()
            assert len(found) == len(ids) == len(seen.delivered)
            phases["db"].append((t1 - t0) * 1000)
            phases["broker"].append((t2 - t1) * 1000)
            phases["leases"].append((t3 - t2) * 1000 - phases["broker"][-1])
            before = _redis_usec(client)
            t0 = time.perf_counter()
            report = run_pass(rt, app)
            phases["pass"].append((time.perf_counter() - t0) * 1000)
            after = _redis_usec(client)
            redis_ms.append(sum(after[k] - before.get(k, 0) for k in after) / 1000)
            assert report is not None and not report.requeued and report.examined == len(ids)
        print(json.dumps({
            "lines": args.lines,
            "message_bytes_each": round(sum(map(len, raw)) / len(raw)),
            "broker_bytes_read_per_pass": sum(map(len, raw)),
            "pass_without_open_jobs_ms": round(statistics.median(empty), 2),
            **{f"{k}_ms_median": round(statistics.median(v), 1) for k, v in phases.items()},
            "redis_busy_ms_per_pass": round(statistics.median(redis_ms), 1),
        }, indent=1))
    finally:
        release_redis_db(redis_url, token)
        drop_pg_database(db_url)


if __name__ == "__main__":
    main()
