"""The OpenAI-compatible stream and the WebSocket beside the native SSE stream, and how
soon a client that leaves mid-answer stops the provider's stream.

Starts a real stack (as ``bench.gateway`` does), then in one run:
- streams the same chat natively (SSE), through ``/v1/chat/completions`` and over one
  WebSocket carrying every job at once, and reports TTFT and total time side by side;
- drops the client mid-stream (SSE, OpenAI stream, WebSocket) and times until the mock
  provider sees its stream closed;
- the same before the first token of a model that thinks for 10 s: the client leaves,
  or cancels the job with ``DELETE``.

    .venv/bin/python -m bench.compat [--requests 200] [--concurrency 20] [--disconnects 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websocket

from bench import loadgen
from bench.gateway import boot, teardown
from tests.stack import Stack

MODEL = UPSTREAM = "gpt-5-mini"
TOKENS = 50
PROFILE = {"model": UPSTREAM, "ttft_ms": 50, "token_ms": 5, "tokens": TOKENS}
# Long answers for the disconnect runs: 30 ms a token, 10 s in all.
SLOW = {"model": "deepseek-chat", "ttft_ms": 20, "token_ms": 30, "tokens": 330}
# A model that thinks 10 s before its first token, for leaving (or cancelling) before it.
THINKING = {"model": "llama-3.3-70b-versatile", "ttft_ms": 10_000, "token_ms": 10,
            "tokens": 20}
THINKING_MODEL = "llama-3.3-70b"
MESSAGES = [{"role": "user", "content": "Benchmark me."}]


def openai_body() -> bytes:
    # A busy worker joins tokens read together into one chunk (paced reads): the usage
    # chunk, not the chunk count, tells that every token arrived.
    return json.dumps({"model": MODEL, "stream": True, "messages": MESSAGES,
                       "stream_options": {"include_usage": True}}).encode()


def ws_url(s: Stack) -> str:
    return s.url.replace("http://", "ws://") + "/api/v1/ws"


def ws_multiplexed(s: Stack, key: str, jobs: int) -> dict[str, float]:
    """``jobs`` chats sent at once on one socket; per-job TTFT and total from its send."""
    conn = websocket.create_connection(ws_url(s), timeout=60,
                                       header=[f"Authorization: Bearer {key}"])
    conn.recv()
    start: dict[str, float] = {}
    ttft: dict[str, float] = {}
    total: dict[str, float] = {}
    t0 = time.perf_counter()
    for i in range(jobs):
        cid = f"j{i}"
        start[cid] = time.perf_counter()
        conn.send(json.dumps({"type": "chat", "id": cid, "model": MODEL,
                              "messages": MESSAGES}))
    while len(total) < jobs:
        msg = json.loads(conn.recv())
        cid, now = msg.get("id"), time.perf_counter()
        if msg["type"] == "event" and msg["data"].get("delta") and cid not in ttft:
            ttft[cid] = (now - start[cid]) * 1000
        elif msg["type"] == "done":
            total[cid] = (now - start[cid]) * 1000
        elif msg["type"] == "error":
            raise RuntimeError(msg)
    wall = time.perf_counter() - t0
    conn.close()
    return {"ttft_p50_ms": round(statistics.median(ttft.values()), 2),
            "total_p50_ms": round(statistics.median(total.values()), 2),
            "rps": round(jobs / wall, 1), "errors": 0}


def closed_streams(mock: httpx.Client, upstream: str = str(SLOW["model"])) -> int:
    stats = mock.get("/_mock/stats").json()
    return int(stats["client_disconnects"].get(upstream, 0))


def wait_closed(mock: httpx.Client, before: int, left: float,
                upstream: str = str(SLOW["model"])) -> float:
    while closed_streams(mock, upstream) <= before:
        if time.perf_counter() - left > 10:
            return float("inf")
        time.sleep(0.005)
    return (time.perf_counter() - left) * 1000


def open_sse(s: Stack, key: str, path: str, body: dict[str, Any]) -> socket.socket:
    host, port = s.url.removeprefix("http://").split(":")
    raw = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
                 .encode() + raw)
    return sock


def drop_sse(s: Stack, key: str, path: str, body: dict[str, Any]) -> float:
    """Read ten token lines, close the socket, time until the provider stream closes."""
    mock = httpx.Client(base_url=s.mock_url)
    before = closed_streams(mock)
    sock = open_sse(s, key, path, body)
    seen = 0
    buf = b""
    while seen < 10:
        buf += sock.recv(65536)
        seen = buf.count(b'"delta":"') + buf.count(b'"content":"')
    sock.close()
    return wait_closed(mock, before, time.perf_counter())


def early(s: Stack, key: str, cancel: bool) -> float:
    """Open a stream of the thinking model, wait until the provider call is open, then
    leave (or cancel the job); time until the provider stream closes."""
    upstream = str(THINKING["model"])
    mock = httpx.Client(base_url=s.mock_url)
    before = closed_streams(mock, upstream)
    opened = int(mock.get("/_mock/stats").json()["calls"].get(upstream, 0))
    body = {"model": THINKING_MODEL, "stream": True, "messages": MESSAGES}
    sock = open_sse(s, key, "/api/v1/chat", body)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    job_id = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                  if line.lower().startswith(b"x-chorus-job-id:"))
    while int(mock.get("/_mock/stats").json()["calls"].get(upstream, 0)) <= opened:
        time.sleep(0.005)
    left = time.perf_counter()
    if cancel:
        httpx.delete(f"{s.url}/api/v1/jobs/{job_id}",
                     headers={"Authorization": f"Bearer {key}"}).raise_for_status()
    else:
        sock.close()
    took = wait_closed(mock, before, left, upstream)
    sock.close()
    return took


def drop_ws(s: Stack, key: str) -> float:
    mock = httpx.Client(base_url=s.mock_url)
    before = closed_streams(mock)
    conn = websocket.create_connection(ws_url(s), timeout=30,
                                       header=[f"Authorization: Bearer {key}"])
    conn.recv()
    conn.send(json.dumps({"type": "chat", "id": "d", "model": "deepseek-v3.2",
                          "messages": MESSAGES}))
    seen = 0
    while seen < 10:
        seen += json.loads(conn.recv())["type"] == "event"
    assert conn.sock is not None
    conn.sock.close()  # vanish without a close frame, as a dropped tab does
    return wait_closed(mock, before, time.perf_counter())


def disconnects(s: Stack, key: str, runs: int) -> dict[str, dict[str, float]]:
    httpx.post(f"{s.mock_url}/_mock/config", json=SLOW).raise_for_status()
    httpx.post(f"{s.mock_url}/_mock/config", json=THINKING).raise_for_status()
    native = {"model": "deepseek-v3.2", "stream": True, "messages": MESSAGES}
    kinds = {
        "sse": lambda: drop_sse(s, key, "/api/v1/chat", native),
        "openai": lambda: drop_sse(s, key, "/v1/chat/completions", native),
        "websocket": lambda: drop_ws(s, key),
        "sse, before the first token": lambda: early(s, key, cancel=False),
        "DELETE, before the first token": lambda: early(s, key, cancel=True),
    }
    out = {}
    for name, once in kinds.items():
        times = sorted(once() for _ in range(runs))
        out[name] = {"median_ms": round(statistics.median(times), 1),
                     "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1),
                     "max_ms": round(times[-1], 1)}
        print(name, json.dumps(out[name]), flush=True)
    return out


async def streams(s: Stack, key: str, n: int, conc: int,
                  rounds: int = 4) -> dict[str, dict[str, Any]]:
    """Native and OpenAI runs alternate in rounds, so a busy spell on the shared machine
    lands on both; each row pools its rounds."""
    auth = {"Authorization": f"Bearer {key}"}
    targets = {
        "native SSE": (f"{s.url}/api/v1/chat", loadgen.chat_body(MODEL), auth),
        "OpenAI chunks": (f"{s.url}/v1/chat/completions", openai_body(), auth),
    }
    for target in targets.values():
        await loadgen.run("warm", lambda t=target: t, conc, 40, TOKENS)  # type: ignore[misc]
    pooled = {label: loadgen.Run(label, conc, 0.0) for label in targets}
    for _ in range(rounds):
        for label, target in targets.items():
            run = await loadgen.run(label, lambda t=target: t, conc,  # type: ignore[misc]
                                    max(conc, n // rounds), TOKENS)
            pooled[label].results += run.results
            pooled[label].wall_s += run.wall_s
    rows: dict[str, dict[str, Any]] = {}
    for label, run in pooled.items():
        st = run.stats()
        rows[label] = {k: st[k] for k in ("ttft_p50_ms", "total_p50_ms", "rps", "errors")}
        print(label, json.dumps(rows[label]), flush=True)
    rows[f"WebSocket ({conc} jobs on 1 socket)"] = ws_multiplexed(s, key, conc)
    return rows


def report(rows: dict[str, dict[str, Any]], drops: dict[str, dict[str, float]]) -> str:
    base = rows["native SSE"]
    lines = ["| path | TTFT p50 ms | total p50 ms | ratio total/native | req/s | errors |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ratio = round(float(r["total_p50_ms"]) / float(base["total_p50_ms"]), 3)
        lines.append(f"| {name} | {r['ttft_p50_ms']} | {r['total_p50_ms']} | {ratio} | "
                     f"{r['rps']} | {r['errors']} |")
    lines += ["", "| client leaves via | median ms | p90 ms | max ms |", "|---|---|---|---|"]
    for name, d in drops.items():
        lines.append(f"| {name} | {d['median_ms']} | {d['p90_ms']} | {d['max_ms']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--disconnects", type=int, default=15)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    s, token = boot(tmp, web_workers=2, worker_concurrency=200)
    try:
        key = s.create_key(credits=10_000_000, tier="paid")
        httpx.post(f"{s.mock_url}/_mock/config", json=PROFILE).raise_for_status()
        rows = asyncio.run(streams(s, key, args.requests, args.concurrency))
        drops = disconnects(s, key, args.disconnects)
        print()
        print(report(rows, drops))
    finally:
        teardown(s, token)


if __name__ == "__main__":
    main()
