"""A call is stopped once its job is cancelled, and only then, whether it streams or waits
in silence: against a real HTTP server that sends its headers and then tokens or nothing
for a long time, and a real Redis holding the cancel flags."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis

from shared.events import CANCELS_CHANNEL, cancel_key
from workers.stopper import Guard, Stopper

SILENCE_S = 10.0


class _Silent(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/slow-headers":
            time.sleep(0.3)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        if self.path != "/tokens":
            time.sleep(SILENCE_S)
            return
        deadline = time.monotonic() + SILENCE_S
        while time.monotonic() < deadline:
            self.wfile.write(b"%X\r\n%s\r\n" % (len(b"data: x\n\n"), b"data: x\n\n"))
            self.wfile.flush()
            time.sleep(0.01)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def stopper(redis_client: redis.Redis) -> Stopper:
    """Driven by the test's own calls of ``check``."""
    return Stopper(redis_client, interval_s=0.05, loop=False)


@pytest.fixture
def looping(redis_client: redis.Redis) -> Iterator[Callable[[float], Stopper]]:
    """Stoppers whose loop and listener run, closed after the test."""
    made: list[Stopper] = []

    def make(interval_s: float) -> Stopper:
        made.append(Stopper(redis_client, interval_s=interval_s))
        return made[-1]

    yield make
    for s in made:
        s.close()


def read_in_background(url: str, guard: Guard) -> dict[str, Any]:
    """Open the stream, hand it to the guard and read until it ends; what happened."""
    out: dict[str, Any] = {}

    def read() -> None:
        start = time.monotonic()
        try:
            with httpx.Client(timeout=SILENCE_S * 2) as http, \
                    http.stream("GET", url) as resp:
                guard.opened(resp)
                out["opened"] = time.monotonic()
                for _ in resp.iter_bytes():
                    pass
        except httpx.HTTPError as exc:
            out["error"] = type(exc).__name__
        out["took"] = time.monotonic() - start

    out["thread"] = threading.Thread(target=read, daemon=True)
    out["thread"].start()
    return out


@pytest.mark.parametrize("path", ["", "/tokens"], ids=["quiet", "streaming"])
def test_a_call_of_a_cancelled_job_is_stopped(
        url: str, path: str, stopper: Stopper, redis_client: redis.Redis,
        job_id: str) -> None:
    guard = stopper.watch(job_id)
    out = read_in_background(f"{url}{path}", guard)
    time.sleep(0.2)
    assert stopper.check() == 0  # its job goes on
    redis_client.set(cancel_key(job_id), "1", ex=60)
    try:
        assert stopper.check() == 1
        out["thread"].join(2.0)
        assert not out["thread"].is_alive(), "the read was not stopped"
        assert guard.stopped and out["took"] < 2.0
        assert stopper.check() == 0  # stopped once
    finally:
        stopper.release(guard)
        redis_client.delete(cancel_key(job_id))


def test_a_call_stopped_before_its_headers_is_shut_when_they_come(
        url: str, stopper: Stopper, redis_client: redis.Redis, job_id: str) -> None:
    redis_client.set(cancel_key(job_id), "1", ex=60)
    guard = stopper.watch(job_id)
    try:
        out = read_in_background(f"{url}/slow-headers", guard)
        time.sleep(0.1)
        assert stopper.check() == 1  # nothing to shut yet
        out["thread"].join(2.0)
        assert not out["thread"].is_alive(), "the read was not stopped"
        assert "opened" in out and out["took"] < 2.0
    finally:
        stopper.release(guard)
        redis_client.delete(cancel_key(job_id))


def test_the_loop_stops_a_released_call_never(
        looping: Callable[[float], Stopper], redis_client: redis.Redis, job_id: str) -> None:
    stopper = looping(0.05)
    guard = stopper.watch(job_id)
    stopper.release(guard)
    redis_client.set(cancel_key(job_id), "1", ex=60)
    try:
        time.sleep(0.2)  # the loop thread ran a few times
        assert not guard.stopped
    finally:
        redis_client.delete(cancel_key(job_id))


def test_the_loop_runs_by_itself(url: str, looping: Callable[[float], Stopper],
                                 redis_client: redis.Redis, job_id: str) -> None:
    stopper = looping(0.05)
    guard = stopper.watch(job_id)
    out = read_in_background(url, guard)
    time.sleep(0.1)
    redis_client.set(cancel_key(job_id), "1", ex=60)
    try:
        out["thread"].join(2.0)
        assert not out["thread"].is_alive() and guard.stopped
    finally:
        stopper.release(guard)
        redis_client.delete(cancel_key(job_id))


def test_an_announced_cancel_stops_the_jobs_calls_at_once(
        url: str, looping: Callable[[float], Stopper], redis_client: redis.Redis,
        job_id: str) -> None:
    def listeners() -> int:
        return int(dict(redis_client.pubsub_numsub(CANCELS_CHANNEL))[CANCELS_CHANNEL.encode()])

    before = listeners()
    # A loop that would look only after a minute: the announcement does the stopping.
    stopper = looping(60)
    other = stopper.watch(f"{job_id}-other")
    guard = stopper.watch(job_id)
    out = read_in_background(f"{url}/tokens", guard)
    deadline = time.monotonic() + 5
    while listeners() <= before:
        assert time.monotonic() < deadline, "the listener never subscribed"
        time.sleep(0.01)
    try:
        redis_client.publish(CANCELS_CHANNEL, job_id)
        out["thread"].join(2.0)
        assert not out["thread"].is_alive(), "the read was not stopped"
        assert guard.stopped and not other.stopped
    finally:
        stopper.release(guard)
        stopper.release(other)
