"""What extending a running job's hold costs, and how many extensions answers need.

    .venv/bin/python -m bench.extension [--n 2000]

Part one runs ``shared.extension.extend`` ``n`` times in a row on PostgreSQL (autocommit,
as a worker runs it) and reports the round trip per extension (p50, p99) and the CPU the
database's backend spent on each (its ``/proc`` counters, read before and after). Part
two streams answers of several lengths (four bytes a token, and the mock provider's own
words) through a
``workers.meter.Meter`` with the database call counted rather than made, and reports
how many extensions each length takes on a 512-token hold.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid
from decimal import Decimal

from sqlalchemy import text

from shared import extension, keys, ledger
from shared.db import autocommit, session_scope
from shared.migrate import upgrade
from shared.registry import get_registry
from shared.tables import ApiKey, Job
from tests.stack import create_pg_database, drop_pg_database
from workers import meter
from workers.providers.base import ChatCall
from workers.providers.mock.plan import generate_words

LENGTHS = (50, 300, 600, 1000, 2000, 4000, 8000, 16000)


def _backend_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_trips(n: int) -> dict[str, float]:
    url = create_pg_database()
    try:
        upgrade(url)
        job_id = str(uuid.uuid4())
        with session_scope(url) as s:
            keys.create_key(s, f"bench-{job_id[:8]}", credits=Decimal(10**9))
            key = s.query(ApiKey).order_by(ApiKey.id.desc()).first()
            assert key is not None
            s.add(Job(id=job_id, account_id=key.account_id, key_id=key.id, kind="chat",
                      status="running", request=None, credits_reserved=Decimal(1)))
            s.flush()
            ledger.reserve(s, key.account_id, job_id, Decimal(1))
        with autocommit(url) as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            for _ in range(50):  # warm the connection and the plan
                extension.extend(conn, job_id, Decimal("0.001"))
            times: list[float] = []
            cpu0 = _backend_cpu_s(pid)
            for _ in range(n):
                t0 = time.perf_counter()
                assert extension.extend(conn, job_id, Decimal("0.001")).held
                times.append((time.perf_counter() - t0) * 1000)
            cpu = _backend_cpu_s(pid) - cpu0
    finally:
        drop_pg_database(url)
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(len(times) * 0.99)],
            "db_cpu_ms": cpu * 1000 / n}


def extensions_needed(tokens: int, words: bool) -> int:
    """Extensions a ``tokens``-long answer takes: in the mock's words (about 6.4 bytes a
    token, which the meter's four bytes a token overcounts) or at four bytes a token
    (English text from a real tokenizer)."""
    model = get_registry().get("gpt-5-mini")
    calls: list[Decimal] = []

    def counted(_job_id: str, credits: Decimal) -> str:
        calls.append(credits)
        return extension.OK

    real, meter.extend = meter.extend, counted
    try:
        m = meter.Meter("bench", model, ChatCall(messages=[{"role": "user", "content": "hi"}]),
                        charge=True)
        pieces = generate_words(random.Random(tokens), tokens) if words else ["abcd"] * tokens
        for piece in pieces:
            m.add(piece)
    finally:
        meter.extend = real
    return len(calls)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    r = round_trips(args.n)
    print(f"one extension on PostgreSQL ({args.n} in a row): p50 {r['p50_ms']:.3f} ms, "
          f"p99 {r['p99_ms']:.3f} ms, database CPU {r['db_cpu_ms']:.3f} ms")
    print("answer tokens -> extensions on a 512-token hold (4 bytes a token; mock words)")
    for n in LENGTHS:
        print(f"  {n:>6} -> {extensions_needed(n, False)}; {extensions_needed(n, True)}")


if __name__ == "__main__":
    main()
