"""What the gateway adds to a streamed chat: TTFT, throughput, CPU and memory.

Starts a real stack (PostgreSQL, Redis, mock provider, gunicorn+gevent API, Celery gevent
worker), then for each concurrency streams the same chat straight from the mock and
through Chorus, side by side in one run.

    .venv/bin/python -m bench.gateway [--requests-scale 1.0] [--web-workers 1]
        [--worker-processes 2] [--worker-concurrency 300] [--keys 1]
        [--levels 1:40,50:1000,200:1200]

Sized for two cores by default: one API process and two Celery worker processes, which
log warnings only, as the Procfile runs them. A worker process spends two to three
times the CPU an API process does per streamed request, and one cannot carry 100
requests/s on its own; a second API process only adds a process to schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from bench import loadgen, procstat
from shared.migrate import upgrade
from tests.procs import free_port, start, stop, wait_http
from tests.stack import (
    Stack,
    claim_redis_db,
    create_pg_database,
    drop_pg_database,
    release_redis_db,
)

MODEL, UPSTREAM = "gpt-5-mini", "gpt-5-mini"
PROFILE = {"model": UPSTREAM, "ttft_ms": 50, "token_ms": 5, "tokens": 50}
LEVELS = [(1, 40), (50, 1000), (200, 1200)]
# The machine's CPU by who spent it, in ms per request (every process: the mock, the
# database and Redis share the two cores with Chorus).
MACHINE_GROUPS = ("api", "workers", "mock", "postgres", "redis-server", "load generator")


def boot(tmp: Path, web_workers: int, worker_concurrency: int,
         worker_processes: int = 1, worker_loglevel: str = "warning") -> tuple[Stack, str]:
    """The stack as the Procfile runs it (workers log warnings only, not every task)."""
    mock_port = free_port()
    mock_url = f"http://127.0.0.1:{mock_port}"
    db_url = create_pg_database()
    redis_url, token = claim_redis_db()
    upgrade(db_url)
    env = dict(
        os.environ, CHORUS_DATABASE_URL=db_url, CHORUS_REDIS_URL=redis_url,
        CHORUS_MOCK_URL=mock_url, CHORUS_DATA_DIR=str(tmp),
        CHORUS_WORKER_CONCURRENCY=str(worker_concurrency),
        # The benchmark measures the relay, not the rate limiter: lift the limits.
        CHORUS_RATE_LIMIT_SCALE="1000",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    s = Stack(url="", mock_url=mock_url, database_url=db_url, redis_url=redis_url, env=env,
              logs=tmp)
    s.procs["mock"] = start(["workers.providers.mock", "--port", str(mock_port)], env,
                            tmp / "mock.log")
    wait_http(f"{mock_url}/_mock/health", s.procs["mock"], tmp / "mock.log")
    for i in range(worker_processes):
        s.start_worker(f"worker{i}" if i else "worker", concurrency=worker_concurrency,
                       loglevel=worker_loglevel)
    s.url = s.start_api(workers=web_workers)
    return s, token


def teardown(s: Stack, token: str) -> None:
    """Stop every process ``boot`` started and give back its database and Redis db."""
    stop(s.procs.pop("mock"))
    s.shutdown()
    release_redis_db(s.redis_url, token)
    drop_pg_database(s.database_url)


def chorus_pids(s: Stack) -> list[int]:
    pids: list[int] = []
    for name, proc in s.procs.items():
        if name != "mock":
            pids += procstat.tree_pids(proc.pid)
    return pids


def redis_work(client: redis.Redis) -> tuple[int, int]:
    """Commands the Redis server has run, and reads (round trips, a pipeline being one)
    it has taken from its clients, so far."""
    commands = sum(int(v["calls"]) for v in client.info("commandstats").values())
    return commands, int(client.info("stats")["total_reads_processed"])


def process_groups(s: Stack) -> dict[int, str]:
    """Chorus' own processes by role, the mock, and this process (the load generator)."""
    groups = {os.getpid(): "load generator"}
    for name, proc in s.procs.items():
        role = "mock" if name == "mock" else "workers" if name.startswith("worker") else "api"
        for pid in procstat.tree_pids(proc.pid):
            groups[pid] = role
    return groups


def cpu_by_role(s: Stack) -> dict[str, float]:
    """CPU seconds so far of the API processes and of the worker processes."""
    out = {"api": 0.0, "workers": 0.0}
    for name, proc in s.procs.items():
        if name != "mock":
            role = "workers" if name.startswith("worker") else "api"
            out[role] += procstat.cpu_seconds(procstat.tree_pids(proc.pid))
    return out


async def measure(s: Stack, keys: list[str], scale: float,
                  levels: list[tuple[int, int]]) -> list[dict[str, object]]:
    direct_url = f"{s.mock_url}/v1/chat/completions"
    direct_body = json.dumps({"model": UPSTREAM, "stream": True,
                              "stream_options": {"include_usage": True},
                              "messages": [{"role": "user", "content": "Benchmark me."}]}
                             ).encode()
    gw_url = f"{s.url}/api/v1/chat"
    gw_body = loadgen.chat_body(MODEL)
    # Requests take the keys in turn: one key is one account, as a chatbot backend calls.
    auths = itertools.cycle([{"Authorization": f"Bearer {k}"} for k in keys])
    rows: list[dict[str, object]] = []
    server = redis.Redis.from_url(s.redis_url)
    # Warm both paths: connection pools, imports, prepared statements.
    await loadgen.run("warm", lambda: (gw_url, gw_body, next(auths)), 20, 60, 50)
    await loadgen.run("warm", lambda: (direct_url, direct_body, {}), 20, 60, 50)
    for conc, n in levels:
        n = max(conc, int(n * scale))
        direct = await loadgen.run("direct", lambda: (direct_url, direct_body, {}), conc, n, 50)
        pids = chorus_pids(s)
        cpu0 = procstat.cpu_seconds(pids)
        roles0 = cpu_by_role(s)
        work0 = redis_work(server)
        groups = process_groups(s)
        machine0 = procstat.cpu_by_command()
        gw = await loadgen.run("chorus", lambda: (gw_url, gw_body, next(auths)), conc, n, 50)
        machine = procstat.spent_by_group(machine0, procstat.cpu_by_command(), groups)
        cpu = procstat.cpu_seconds(chorus_pids(s)) - cpu0
        commands, reads = (b - a for a, b in zip(work0, redis_work(server), strict=True))
        roles = {k: v - roles0[k] for k, v in cpu_by_role(s).items()}
        d, g = direct.stats(), gw.stats()
        good = max(1, int(g["requests"]) - int(g["errors"]))
        rows.append({
            "concurrency": conc, "requests": n,
            "direct_ttft_p50": d["ttft_p50_ms"], "chorus_ttft_p50": g["ttft_p50_ms"],
            "added_ttft_p50": round(float(g["ttft_p50_ms"]) - float(d["ttft_p50_ms"]), 2),
            "direct_ttft_p99": d["ttft_p99_ms"], "chorus_ttft_p99": g["ttft_p99_ms"],
            "added_ttft_p99": round(float(g["ttft_p99_ms"]) - float(d["ttft_p99_ms"]), 2),
            "direct_rps": d["rps"], "chorus_rps": g["rps"],
            "direct_errors": d["errors"], "chorus_errors": g["errors"],
            "cpu_ms_per_request": round(cpu * 1000 / good, 2),
            "api_cpu_ms": round(roles["api"] * 1000 / good, 2),
            "workers_cpu_ms": round(roles["workers"] * 1000 / good, 2),
            "redis_commands": round(commands / n, 1),
            "redis_round_trips": round(reads / n, 1),
            "errors_sample": [r.error for r in gw.results if not r.ok][:3],
            "machine_cpu_ms": {
                **{g: round(machine.get(g, 0.0) * 1000 / good, 2) for g in MACHINE_GROUPS},
                "other": round(sum(v for g, v in machine.items() if g not in MACHINE_GROUPS)
                               * 1000 / good, 2),
                "cores_busy": round(sum(machine.values()) / gw.wall_s, 2),
            },
        })
        print(json.dumps(rows[-1]), flush=True)
    rows.append({"peak_rss_mb": procstat.peak_rss_mb(chorus_pids(s))})
    return rows


def machine_speed_s() -> float:
    """Seconds for a fixed pure-Python loop: shared machines vary in speed from hour to
    hour, and every number of a run scales with it."""
    start = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return round(time.perf_counter() - start, 3)


def table(rows: list[dict[str, object]]) -> str:
    cols = ["concurrency", "requests", "direct_ttft_p50", "chorus_ttft_p50", "added_ttft_p50",
            "direct_ttft_p99", "chorus_ttft_p99", "added_ttft_p99", "direct_rps", "chorus_rps",
            "chorus_errors", "cpu_ms_per_request", "api_cpu_ms", "workers_cpu_ms",
            "redis_commands", "redis_round_trips"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "concurrency" in r:
            out.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(out)


def machine_table(rows: list[dict[str, object]]) -> str:
    cols = [*MACHINE_GROUPS, "other"]
    out = ["| concurrency | " + " | ".join(cols) + " | all | cores busy |",
           "|" + "---|" * (len(cols) + 3)]
    for r in rows:
        if "concurrency" in r:
            m = r["machine_cpu_ms"]
            assert isinstance(m, dict)
            out.append(f"| {r['concurrency']} | " + " | ".join(str(m[c]) for c in cols)
                       + f" | {round(sum(m[c] for c in cols), 2)} | {m['cores_busy']} |")
    return "\n".join(out)


def parse_levels(text: str) -> list[tuple[int, int]]:
    """``1:40,50:1000``: concurrency and requests of each level, in order."""
    return [(int(c), int(n)) for c, n in (part.split(":") for part in text.split(","))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests-scale", type=float, default=1.0)
    ap.add_argument("--web-workers", type=int, default=1)
    ap.add_argument("--worker-concurrency", type=int, default=300)
    ap.add_argument("--worker-processes", type=int, default=2)
    ap.add_argument("--levels", type=parse_levels, default=LEVELS,
                    help="concurrency:requests of each level, e.g. 20:600,50:1000")
    ap.add_argument("--keys", type=int, default=1,
                    help="spread the requests over this many keys, each of its own account")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    s, token = boot(tmp, args.web_workers, args.worker_concurrency, args.worker_processes)
    try:
        keys = [s.create_key(credits=10_000_000, tier="paid") for _ in range(args.keys)]
        httpx.post(f"{s.mock_url}/_mock/config", json=PROFILE).raise_for_status()
        time.sleep(0.5)
        speed = machine_speed_s()
        rows = asyncio.run(measure(s, keys, args.requests_scale, args.levels))
        print()
        print(table(rows))
        print("\nCPU of every process on the machine during the chorus runs, ms per request:")
        print(machine_table(rows))
        print(f"\npeak RSS of all Chorus processes: {rows[-1]['peak_rss_mb']} MB")
        print(f"machine speed: 10M-iteration Python loop {speed} s before the run, "
              f"{machine_speed_s()} s after")
    finally:
        teardown(s, token)


if __name__ == "__main__":
    main()
