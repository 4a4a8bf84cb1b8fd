"""A large batch beside a chatbot: how long its submission and its run take, and what it
does to an interactive chat's time to first token meanwhile.

Starts the stack as ``bench.gateway`` does (one API process, two Celery worker
processes), then in one run: streams interactive chats one at a time on an idle stack;
then submits a batch of chat lines from a thread and streams the same chats, one at a
time, from its submission until its last job ends.

    .venv/bin/python -m bench.batches [--lines 1000] [--chats 40] [--split]

``--split`` runs the worker processes as the ``Procfile`` and the deployment files do: one
consumes only the interactive queue, the other only the batch queue. Without it both
consume both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench import gateway, loadgen
from tests.stack import Stack

CHAT_MODEL = "gpt-5-mini"
CHAT_TOKENS = 50
CHAT_PROFILE = {"model": "gpt-5-mini", "ttft_ms": 50, "token_ms": 5, "tokens": CHAT_TOKENS}
# A batch line: an evaluation prompt answered in about half a second.
BATCH_MODEL = "deepseek-v3.2"
BATCH_PROFILE = {"model": "deepseek-chat", "ttft_ms": 200, "token_ms": 10, "tokens": 30}


def batch_body(lines: int) -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"q{i}", "endpoint": "chat",
        "body": {"model": BATCH_MODEL, "max_tokens": 64,
                 "messages": [{"role": "user", "content": f"Evaluate item {i}."}]},
    }).encode() + b"\n" for i in range(lines))


def summary(run: loadgen.Run) -> dict[str, Any]:
    st = run.stats()
    return {k: st[k] for k in ("requests", "ttft_p50_ms", "ttft_p99_ms", "total_p50_ms",
                               "errors")}


async def chats(s: Stack, key: str, n: int) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {key}"}
    target = (f"{s.url}/api/v1/chat", loadgen.chat_body(CHAT_MODEL), auth)
    return summary(await loadgen.run("chat", lambda: target, 1, n, CHAT_TOKENS))


async def chats_until(s: Stack, key: str, done: threading.Event) -> dict[str, Any]:
    """One chat after another until ``done`` is set."""
    auth = {"Authorization": f"Bearer {key}"}
    body = loadgen.chat_body(CHAT_MODEL)
    run = loadgen.Run("chat", 1, 0.0)
    while not done.is_set():
        run.results.append(await loadgen.one(f"{s.url}/api/v1/chat", body, auth, CHAT_TOKENS))
    return summary(run)


def wait_batch(api: httpx.Client, batch_id: str, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        view: dict[str, Any] = api.get(f"/api/v1/batches/{batch_id}").json()
        if view["status"] in ("completed", "cancelled"):
            return view
        if time.monotonic() > deadline:
            raise TimeoutError(view)
        time.sleep(0.2)


def boot(tmp: Path, split: bool) -> tuple[Stack, str]:
    if not split:
        return gateway.boot(tmp, web_workers=1, worker_concurrency=300, worker_processes=2)
    s, token = gateway.boot(tmp, web_workers=1, worker_concurrency=300, worker_processes=0)
    s.start_worker("worker", concurrency=300, loglevel="warning", queues="interactive")
    s.start_worker("batch-worker", concurrency=300, loglevel="warning", queues="batch")
    return s, token


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--chats", type=int, default=40, help="chats on the idle stack")
    ap.add_argument("--split", action="store_true",
                    help="a worker process per queue instead of two for both")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    s, token = boot(tmp, args.split)
    try:
        key = s.create_key(credits=10_000_000, tier="paid")
        for profile in (CHAT_PROFILE, BATCH_PROFILE):
            httpx.post(f"{s.mock_url}/_mock/config", json=profile).raise_for_status()
        asyncio.run(chats(s, key, 10))  # warm connections and pools
        idle = asyncio.run(chats(s, key, args.chats))
        api = httpx.Client(base_url=s.url, timeout=120,
                           headers={"Authorization": f"Bearer {key}"})
        done = threading.Event()
        got: dict[str, Any] = {}

        def submit_and_wait() -> None:
            try:
                r = api.post("/api/v1/batches", content=batch_body(args.lines),
                             headers={"Content-Type": "application/jsonl"})
                got["submit_s"] = time.perf_counter() - started
                r.raise_for_status()
                got["view"] = wait_batch(api, r.json()["id"])
            finally:
                done.set()

        started = time.perf_counter()
        thread = threading.Thread(target=submit_and_wait)
        thread.start()
        busy = asyncio.run(chats_until(s, key, done))
        thread.join()
        ran_s = time.perf_counter() - started
        view, submitted_s = got["view"], got["submit_s"]
        out = {
            "workers": "one per queue" if args.split else "two for both queues",
            "lines": args.lines, "submit_s": round(submitted_s, 2),
            "batch_s": round(ran_s, 2), "lines_per_s": round(args.lines / ran_s, 1),
            "succeeded": view["counts"]["succeeded"], "chat_idle": idle, "chat_busy": busy,
        }
        print(json.dumps(out))
        print()
        print("| workers | lines | submit s | batch s | lines/s | succeeded | chat TTFT p50 / "
              "p99 idle (ms) | chats during the batch | their TTFT p50 / p99 (ms) | "
              "chat errors |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {out['workers']} | {args.lines} | {out['submit_s']} | {out['batch_s']} | "
              f"{out['lines_per_s']} | {out['succeeded']} | {idle['ttft_p50_ms']} / "
              f"{idle['ttft_p99_ms']} | {busy['requests']} | {busy['ttft_p50_ms']} / "
              f"{busy['ttft_p99_ms']} | "
              f"{int(idle['errors']) + int(busy['errors'])} |")
    finally:
        gateway.teardown(s, token)


if __name__ == "__main__":
    main()
