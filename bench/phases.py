"""Where a streamed chat's time goes, phase by phase, from the client and the job's row.

Starts the same stack as ``bench.gateway`` and streams chats through ``POST /api/v1/chat``;
for each request it joins the client's clock (sent, headers, first token, end) with the
job's row (held at ``created_at``, claimed at ``started_at``, ended at ``finished_at``)
and the provider call's own time to first token, all on this one machine's clock.

    .venv/bin/python -m bench.phases [--concurrency 1] [--requests 60] [--skip 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from bench import gateway, loadgen


async def one(url: str, body: bytes, key: str) -> dict[str, float | str]:
    sent = time.time()
    reader, writer = await loadgen.post(url, body, {"Authorization": f"Bearer {key}"})
    out: dict[str, float | str] = {"sent": sent}
    while line := await reader.readline():
        if line.lower().startswith(b"x-chorus-job-id:"):
            out["job"] = line.split(b":", 1)[1].strip().decode()
        elif line == b"\r\n" and "headers" not in out:
            out["headers"] = time.time()
        elif "first" not in out and loadgen.is_token_line(line):
            out["first"] = time.time()
    out["end"] = time.time()
    writer.close()
    return out


PHASES = {
    "held (request sent -> hold statement starts)": ("sent", "created"),
    "headers (hold starts -> headers at the client)": ("created", "headers"),
    "queued (hold starts -> claimed by a worker)": ("created", "started"),
    "to first token (claimed -> first token at the client)": ("started", "first"),
    "provider call's own TTFT (worker-timed)": ("", "call_ttft"),
    "finished (job row ended -> stream end at the client)": ("finished", "end"),
    "total": ("sent", "end"),
}


async def measure(url: str, key: str, concurrency: int, n: int) -> list[dict[str, float | str]]:
    body = loadgen.chat_body(gateway.MODEL)
    results: list[dict[str, float | str]] = []
    left = list(range(n))

    async def loop() -> None:
        while left:
            left.pop()
            results.append(await one(url, body, key))

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return sorted(results, key=lambda r: float(r["sent"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--skip", type=int, default=10, help="warm-up requests left out")
    ap.add_argument("--worker-processes", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    s, token = gateway.boot(tmp, 1, 300, args.worker_processes)
    try:
        key = s.create_key(credits=10_000_000, tier="paid")
        httpx.post(f"{s.mock_url}/_mock/config", json=gateway.PROFILE).raise_for_status()
        time.sleep(0.5)
        got = asyncio.run(measure(f"{s.url}/api/v1/chat", key, args.concurrency,
                                  args.requests + args.skip))[args.skip:]
        engine = sa.create_engine(s.database_url)
        with engine.connect() as conn:
            rows = {r[0]: r for r in conn.execute(sa.text(
                "SELECT id, created_at, started_at, finished_at, result FROM jobs"))}
        engine.dispose()
        spans: dict[str, list[float]] = {name: [] for name in PHASES}
        for r in got:
            job = rows[str(r["job"])]
            result = job[4] if isinstance(job[4], dict) else json.loads(job[4])
            t = {**r, "created": job[1].timestamp(), "started": job[2].timestamp(),
                 "finished": job[3].timestamp(), "call_ttft": result["ttft_ms"] / 1000}
            for name, (a, b) in PHASES.items():
                spans[name].append((float(t[b]) - (float(t[a]) if a else 0.0)) * 1000)
        print(f"{len(got)} requests at concurrency {args.concurrency} (p10 / p50 / p90 ms)")
        for name, values in spans.items():
            q = statistics.quantiles(values, n=10)
            print(f"| {name} | {q[0]:.1f} | {q[4]:.1f} | {q[8]:.1f} |")
    finally:
        gateway.teardown(s, token)


if __name__ == "__main__":
    main()
