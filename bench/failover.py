"""What a failover costs: time to first token of a mesh chain whose primary fails fast,
against the fallback's own time to first token, side by side in one run.

Runs the worker's failover loop in-process (``workers.mesh.run_chain``: breaker round
trips, route events, the failed call, the fallback's stream) against a real mock
provider process and a real Redis. Scenarios, interleaved per iteration:

- ``direct``: the fallback alone (the baseline);
- ``after_500`` / ``after_429``: the primary answers HTTP 500 / 429 at once;
- ``after_refused``: the primary's host refuses the connection;
- ``after_open``: the primary's breaker is open, so it is skipped without a call.

"added" is, per request, the chain's TTFT minus the fallback call's own TTFT measured in
the same request: everything failover put in front of the answer.

    .venv/bin/python -m bench.failover [--iterations 300] [--ttft-ms 50]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from shared.breaker import Breaker, BreakerConfig, model_keys
from shared.registry import ModelSpec, Registry, parse_registry
from shared.settings import Settings
from tests.procs import free_port, start, stop, wait_http
from tests.stack import claim_redis_db, release_redis_db
from workers.calls import JobContext
from workers.mesh import run_chain
from workers.providers.base import ChatCall
from workers.runtime import Runtime

SCENARIOS = ("direct", "after_500", "after_429", "after_refused", "after_open")
PRIMARY = {"after_500": "bench-p500", "after_429": "bench-p429",
           "after_refused": "bench-refused", "after_open": "bench-open"}
FALLBACK = "bench-fallback"
CALL = ChatCall(messages=[{"role": "user", "content": "Say hello."}])


def registry(mock_url: str, dead_url: str) -> Registry:
    models: dict[str, Any] = {m: {"provider": "mock", "upstream": m}
                              for m in [*PRIMARY.values(), FALLBACK]}
    models["bench-refused"]["provider"] = "dead"
    return parse_registry({
        "providers": {"mock": {"adapter": "openai", "base_url": f"{mock_url}/v1"},
                      "dead": {"adapter": "openai", "base_url": f"{dead_url}/v1"}},
        "models": models,
    })


class TimedContext(JobContext):
    """Notes when the first chunk event is published: the client's first token."""

    first_chunk: float | None = None

    def publish(self, event: dict[str, Any]) -> None:
        if self.first_chunk is None and event.get("event") == "chunk" and event.get("delta"):
            self.first_chunk = time.perf_counter()
        super().publish(event)


def one(rt: Runtime, breaker: Breaker, chain: list[ModelSpec]) -> tuple[float, float]:
    ctx = TimedContext(job_id=str(uuid.uuid4()), account_id=0, runtime=rt)
    ctx.cancelled(force=True)
    start_at = time.perf_counter()
    run = run_chain(ctx, chain, CALL, breaker)
    assert run.answered is not None and run.answered.model == FALLBACK, run.attempts
    assert ctx.first_chunk is not None and run.answered.ttft_ms is not None
    ttft = (ctx.first_chunk - start_at) * 1000
    rt.redis.delete(f"chorus:job:{ctx.job_id}:events")
    return ttft, ttft - run.answered.ttft_ms


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--ttft-ms", type=float, default=50.0, help="the fallback's mock TTFT")
    args = ap.parse_args()
    # One failover log line per request would time the terminal, not the failover.
    logging.getLogger("workers.mesh").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="chorus-bench-failover-"))
    port = free_port()
    mock_url, dead_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"
    mock_proc = start(["workers.providers.mock", "--port", str(port)],
                      dict(os.environ), tmp / "mock.log")
    redis_url, token = claim_redis_db()
    try:
        wait_http(f"{mock_url}/_mock/health", mock_proc, tmp / "mock.log")
        with httpx.Client(base_url=mock_url) as mock:
            mock.post("/_mock/config", json={"model": FALLBACK, "ttft_ms": args.ttft_ms,
                                             "token_ms": 1, "tokens": 5})
            mock.post("/_mock/config", json={"model": "bench-p500",
                                             "fault": {"kind": "status", "status": 500}})
            mock.post("/_mock/config", json={"model": "bench-p429", "fault": {
                "kind": "status", "status": 429, "retry_after": 1}})
        rt = Runtime(Settings(redis_url=redis_url))
        rt.__dict__["registry"] = reg = registry(mock_url, dead_url)
        # Failures must not open the fast-failing primaries (that is the skip scenario).
        breaker = Breaker(rt.redis, BreakerConfig(failures=10**9))
        Breaker(rt.redis, BreakerConfig(failures=1, open_s=3600)).record("bench-open", "fail")
        chains = {s: [reg.get(FALLBACK)] if s == "direct"
                  else [reg.get(PRIMARY[s]), reg.get(FALLBACK)] for s in SCENARIOS}
        for s in SCENARIOS:  # warm the connection pool and the scripts
            one(rt, breaker, chains[s])
        ttft: dict[str, list[float]] = {s: [] for s in SCENARIOS}
        added: dict[str, list[float]] = {s: [] for s in SCENARIOS}
        for _ in range(args.iterations):
            for s in SCENARIOS:
                total, extra = one(rt, breaker, chains[s])
                ttft[s].append(total)
                added[s].append(extra)
        base = statistics.median(ttft["direct"])
        print(f"fallback mock TTFT {args.ttft_ms:g} ms, {args.iterations} requests per "
              "scenario, interleaved\n")
        print("| scenario | TTFT p50 ms | TTFT p99 ms | p50 vs direct | added p50 ms "
              "| added p99 ms |")
        print("|---|---|---|---|---|---|")
        for s in SCENARIOS:
            print(f"| {s} | {statistics.median(ttft[s]):.1f} | {pct(ttft[s], 0.99):.1f} "
                  f"| {statistics.median(ttft[s]) / base:.2f}x "
                  f"| {statistics.median(added[s]):.1f} | {pct(added[s], 0.99):.1f} |")
    finally:
        client = Runtime(Settings(redis_url=redis_url)).redis
        for m in [*PRIMARY.values(), FALLBACK]:
            client.delete(*model_keys(m))
        release_redis_db(redis_url, token)
        stop(mock_proc)


if __name__ == "__main__":
    main()
