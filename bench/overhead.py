"""What credits and rate limits add to one request, side by side with the same request's
database work without them, against a real PostgreSQL and a real Redis.

Per iteration, interleaved so both variants see the same machine load:

- ``baseline``: the job's own writes: insert the job row (API), then mark it ended
  (worker); what a request costs the database with no credits at all;
- ``credits``: the same two transactions as ``api.submit.create_job`` and
  ``workers.jobs.finish`` make them: hold terms, job row, budget holds, wallet reserve;
  then the job update, wallet settle + release, budget settle;
- ``credits+session``: the same with a ``session_id`` under a session cap (the most
  work a request can ask of the ledger: one more budget row to hold and settle);
- ``ratelimit``: the one Lua script call that meters a request (key and IP buckets).

"added" per request = (credits - baseline) + ratelimit, from each variant's median.

    .venv/bin/python -m bench.overhead [--iterations 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import redis
from sqlalchemy import update

from api.ratelimit import Bucket, Limits, RateLimiter
from shared import budgets, keys, ledger
from shared.db import get_engine, session_scope
from shared.migrate import upgrade
from shared.tables import Job
from tests.stack import claim_redis_db, create_pg_database, drop_pg_database, release_redis_db

HOLD = Decimal("1.02125")  # a small chat's worst case (gpt-5-mini, 10 output tokens)
COST = Decimal("1.0201")
BODY = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]}


class Fixture:
    def __init__(self, url: str, iterations: int) -> None:
        self.url = url
        with session_scope(url) as s:
            key = keys.create_key(s, "bench", credits=HOLD * 4 * iterations + 10, tier="paid")
            owner = keys.lookup(s, key)
            assert owner is not None
            self.account_id, self.key_id = owner.account_id, owner.key_id
            # Room for every run: the bench measures the work, not a refusal.
            budgets.set_session_default(s, self.account_id, HOLD * 4 * iterations)

    def _job(self, session_id: str | None) -> Job:
        return Job(id=str(uuid.uuid4()), account_id=self.account_id, key_id=self.key_id,
                   kind="chat", status="queued", request=BODY, session_id=session_id,
                   credits_reserved=HOLD)

    def baseline(self) -> None:
        job = self._job(None)
        with session_scope(self.url) as s:
            s.add(job)
        with session_scope(self.url) as s:
            s.execute(update(Job).where(Job.id == job.id)
                      .values(status="succeeded", finished_at=datetime.now(UTC)))

    def credits(self, session_id: str | None = None) -> None:
        job = self._job(session_id)
        with session_scope(self.url) as s:
            terms = budgets.terms(s, self.key_id)
            s.add(job)
            s.flush()
            budgets.reserve(s, terms, account_id=self.account_id, key_id=self.key_id,
                            session_id=session_id, job_id=job.id, amount=HOLD)
            ledger.reserve(s, self.account_id, job.id, HOLD)
        with session_scope(self.url) as s:
            s.execute(update(Job).where(Job.id == job.id)
                      .values(status="succeeded", finished_at=datetime.now(UTC)))
            charged = ledger.settle(s, job.id, COST)
            s.execute(update(Job).where(Job.id == job.id).values(credits_charged=charged))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1e6


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    url = create_pg_database()
    redis_url, token = claim_redis_db()
    try:
        upgrade(url)
        fx = Fixture(url, args.iterations)
        limiter = RateLimiter(redis.Redis.from_url(redis_url), Limits())
        tag = uuid.uuid4().hex
        meter = [Bucket(f"bench:{tag}:key", 10**9), Bucket(f"bench:{tag}:ip", 10**9)]
        runs: dict[str, Callable[[], object]] = {
            "baseline": fx.baseline,
            "credits": fx.credits,
            "credits+session": lambda: fx.credits("bench-session"),
            "ratelimit": lambda: limiter.take(meter),
        }
        for fn in runs.values():  # warm pools, prepared scripts and caches
            for _ in range(50):
                fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        load = os.getloadavg()[0]
        for _ in range(args.iterations):
            for name, fn in runs.items():
                times[name].append(timed(fn))
        with session_scope(url) as s:
            wallet, summed = ledger.audit(s, fx.account_id)
        assert wallet == summed and wallet.reserved == 0, (wallet, summed)
        report(times, args.iterations, load, os.getloadavg()[0])
    finally:
        get_engine(url).dispose()
        drop_pg_database(url)
        release_redis_db(redis_url, token)


def report(times: dict[str, list[float]], n: int, load0: float, load1: float) -> None:
    p50 = {k: statistics.median(v) for k, v in times.items()}
    print(f"{n} iterations per variant, interleaved; load average {load0:.2f} -> {load1:.2f}")
    print("| variant | p50 ms | p99 ms | p50 vs baseline |")
    print("|---|---|---|---|")
    for name, values in times.items():
        ratio = f"{p50[name] / p50['baseline']:.2f}x" if name != "ratelimit" else "-"
        print(f"| {name} | {p50[name]:.3f} | {pct(values, 0.99):.3f} | {ratio} |")
    for variant in ("credits", "credits+session"):
        added = p50[variant] - p50["baseline"] + p50["ratelimit"]
        print(f"added per request ({variant}): {p50[variant] - p50['baseline']:.3f} ms "
              f"ledger + {p50['ratelimit']:.3f} ms rate limit = {added:.3f} ms p50")


if __name__ == "__main__":
    main()
