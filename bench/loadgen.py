"""A lean asyncio SSE load generator, so the client spends little of the machine's CPU.

HTTP/1.0 keeps the servers from chunking and closes each response at its end; the time to
first token is when the first line carrying a non-empty delta arrives. A stream is
complete when it ends with ``[DONE]`` and, for OpenAI chunks, carries every token (or
its usage counts them all); for
Chorus events (whose chunks may join tokens that queued up), when its final event
succeeded with every token and its text is exactly the deltas received.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse


@dataclass
class Result:
    ok: bool
    ttft_ms: float
    total_ms: float
    tokens: int
    error: str = ""


@dataclass
class Run:
    label: str
    concurrency: int
    wall_s: float
    results: list[Result] = field(default_factory=list)

    def stats(self) -> dict[str, float | int | str]:
        good = [r for r in self.results if r.ok]
        ttft = sorted(r.ttft_ms for r in good)
        total = sorted(r.total_ms for r in good)
        return {
            "label": self.label,
            "concurrency": self.concurrency,
            "requests": len(self.results),
            "errors": len(self.results) - len(good),
            "ttft_p50_ms": pct(ttft, 50),
            "ttft_p99_ms": pct(ttft, 99),
            "total_p50_ms": pct(total, 50),
            "rps": round(len(good) / self.wall_s, 1) if self.wall_s else 0.0,
        }


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1], 2)


def is_token_line(line: bytes) -> bool:
    """A line carrying generated text: OpenAI chunks or Chorus chunk events."""
    if not line.startswith(b"data: {"):
        return False
    return (b'"content":"' in line and b'"content":""' not in line) or (
        b'"event":"chunk"' in line and b'"delta":""' not in line
    )


async def post(url: str, body: bytes, headers: dict[str, str]
               ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send an HTTP/1.0 JSON POST; the response is left to read."""
    u = urlparse(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    head = [f"POST {u.path} HTTP/1.0", f"Host: {u.hostname}:{u.port}",
            "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return reader, writer


async def one(url: str, body: bytes, headers: dict[str, str], expect_tokens: int) -> Result:
    start = time.perf_counter()
    ttft = 0.0
    tokens = 0
    done = False
    text: list[str] = []
    final: dict[str, object] | None = None
    usage_tokens = -1
    try:
        reader, writer = await post(url, body, headers)
        status = await reader.readline()
        if b" 200 " not in status:
            rest = await reader.read()
            writer.close()
            return Result(False, 0, 0, 0, status.decode().strip() + " " + rest[-200:].decode())
        while True:
            line = await reader.readline()
            if not line:
                break
            if is_token_line(line):
                tokens += 1
                if tokens == 1:
                    ttft = (time.perf_counter() - start) * 1000
                if b'"event":"chunk"' in line:
                    text.append(json.loads(line[6:])["delta"])
            elif line.startswith(b'data: {"final":true'):
                final = json.loads(line[6:])
            elif b'"usage":{' in line and line.startswith(b"data: {"):
                usage = json.loads(line[6:]).get("usage") or {}
                usage_tokens = int(usage.get("completion_tokens", -1))
            elif line.startswith(b"data: [DONE]"):
                done = True
        writer.close()
    except OSError as exc:
        return Result(False, 0, 0, tokens, repr(exc))
    total = (time.perf_counter() - start) * 1000
    if final is None:
        # OpenAI chunks: every token, or (when a gateway joined some) the usage's count.
        ok = done and expect_tokens in (tokens, usage_tokens)
        err = "" if ok else f"done={done} tokens={tokens} usage={usage_tokens}"
    else:
        ok = (done and final.get("status") == "succeeded"
              and final.get("completion_tokens") == expect_tokens
              and final.get("full_content") == "".join(text))
        err = "" if ok else (f"done={done} status={final.get('status')} "
                             f"completion_tokens={final.get('completion_tokens')} "
                             f"text_matches={final.get('full_content') == ''.join(text)}")
    return Result(ok, ttft, total, tokens, err)


async def run(
    label: str,
    make: Callable[[], tuple[str, bytes, dict[str, str]]],
    concurrency: int,
    requests: int,
    expect_tokens: int,
    timeout_s: float = 120.0,
) -> Run:
    """``requests`` requests over ``concurrency`` loops; each is bounded by ``timeout_s``."""
    queue = list(range(requests))
    out = Run(label, concurrency, 0.0)

    async def loop() -> None:
        while queue:
            queue.pop()
            url, body, headers = make()
            try:
                res = await asyncio.wait_for(one(url, body, headers, expect_tokens), timeout_s)
            except TimeoutError:
                res = Result(False, 0, timeout_s * 1000, 0, f"no end within {timeout_s} s")
            out.results.append(res)

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    out.wall_s = time.perf_counter() - start
    return out


def chat_body(model: str, stream: bool = True) -> bytes:
    return json.dumps({"model": model, "stream": stream,
                       "messages": [{"role": "user", "content": "Benchmark me."}]}).encode()
