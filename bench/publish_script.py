"""What one write of the worker's publishing script costs Redis and the worker, and what
one read of a replay list costs an API process.

A synchronous loop over a real Redis through the coalescing publisher's own write (its
bookkeeping, one pipeline with one ``EVALSHA``), for batches of 1 and of 8 chunk events
of one job, with the job's relay channel named (the API took the job) as in production.
Reports the median time per write seen by the worker and Redis's own CPU per script call
(``INFO commandstats``: usec_per_call of ``evalsha``). Then ``api.replaylist.read_list`` on a
list of 100 events: at its end (nothing new: a stream's poll after a silence) and 50
events back, by a stream that follows the list and by one that starts reading it.

    .venv/bin/python -m bench.publish_script [--calls 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import redis

from api.replaylist import read_list
from shared import events
from tests.procs import free_port, start, stop
from workers.publisher import CoalescingPublisher, SyncPublisher


def _chunk(i: int) -> dict[str, Any]:
    return {"event": "chunk", "model": "gpt-5.2", "delta": " token", "done": False,
            "latency_ms": float(i), "content_length": 6 * i}


def run(client: redis.Redis, calls: int, batch: int) -> tuple[float, float]:
    """Median microseconds per write seen by the worker, and Redis's usec per call."""
    pub = CoalescingPublisher(client, ttl_s=3600, ttl_after_final_s=600)
    job_id = uuid.uuid4().hex
    client.set(events.relay_key(job_id), "chorus:relay:bench")
    pub._write(OrderedDict({job_id: [_chunk(0)]}), set(), {})  # loads the script
    client.config_resetstat()
    times = []
    for n in range(calls):
        queued = OrderedDict({job_id: [_chunk(n * batch + i) for i in range(batch)]})
        start = time.perf_counter()
        pub._write(queued, set(), {})
        times.append((time.perf_counter() - start) * 1e6)
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    client.delete(events.events_key(job_id), events.relay_key(job_id),
                  f"chorus:job:{job_id}:epoch")
    return statistics.median(times), float(stats.get("usec_per_call", 0.0))


def read(client: redis.Redis, reads: int, after: int, following: bool) -> float:
    """Median microseconds of one ``read_list`` of a 100-event list after ``after``: by a
    stream that follows the list (it knows the list's base and its last event), or by
    one that starts (a resume)."""
    job_id = uuid.uuid4().hex
    pub = SyncPublisher(client, ttl_s=3600, ttl_after_final_s=600)
    for i in range(100):
        pub.publish(job_id, _chunk(i))
    raw = client.lindex(events.events_key(job_id), after - 1)
    seen = raw.decode() if following and isinstance(raw, bytes) else None
    base = 0 if following else None
    read_list(client, job_id, after, base, seen)
    times = []
    for _ in range(reads):
        start = time.perf_counter()
        read_list(client, job_id, after, base, seen)
        times.append((time.perf_counter() - start) * 1e6)
    client.delete(events.events_key(job_id), f"chorus:job:{job_id}:epoch")
    return statistics.median(times)


def own_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of the benchmark's own: its statistics are reset and read alone."""
    port = free_port()
    proc = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(workdir)], dict(os.environ),
                 workdir / "redis.log", module=False)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = own_redis(Path(tmp))
        try:
            client = redis.Redis.from_url(url)
            for batch in (1, 8):
                run(client, min(args.calls, 2000), batch)  # warm-up
                worker_us, redis_us = run(client, args.calls, batch)
                print(f"batch {batch}: {worker_us:.1f} us per write (worker median), "
                      f"{redis_us:.2f} us per script call in Redis")
            for following in (True, False):
                for after in (100, 50):
                    us = read(client, 5000, after, following)
                    print(f"read after {after} of 100, {'following' if following else 'starting'}"
                          f": {us:.1f} us (API median)")
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
