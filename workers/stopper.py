"""Stops a cancelled job's provider call while it waits in silence, not at its next token.

A call looks at its job's cancel flag after each token it relays, so a call still
waiting for its first token (a reasoning model thinking, a slow upstream) would run,
and be paid for, until that token arrived. One thread per process (a greenlet under
gevent) looks every ``interval_s`` at the flags of the calls that have been quiet that
long, in one Redis round trip, and shuts the connection of any whose job was
cancelled: the blocked read returns at once, and the call ends as cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

import httpx
import redis

from shared.events import cancel_key

log = logging.getLogger(__name__)


class Guard:
    """One provider call: its connection, when it last heard from it, whether it was
    stopped."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.stopped = False
        self.last = time.monotonic()
        self._sock: socket.socket | None = None

    def opened(self, response: httpx.Response) -> None:
        """The response headers arrived; its connection is the one to shut."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        self._sock = sock if isinstance(sock, socket.socket) else None
        self.last = time.monotonic()
        if self.stopped:
            self.stop()  # cancelled while the headers were awaited

    def heard(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self.stopped = True
        sock = self._sock
        if sock is not None:
            # A shutdown, not a close: the reader (another greenlet or thread) wakes with
            # an end of stream, and the pool still owns the descriptor it will close.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Stopper:
    """The calls of one process that may need stopping, and the loop that looks."""

    def __init__(self, client: redis.Redis, interval_s: float = 0.25, *,
                 loop: bool = True) -> None:
        """``loop=False``: nothing looks unless ``check`` is called."""
        self._client = client
        self.interval_s = interval_s
        self._guards: dict[int, Guard] = {}
        self._lock = threading.Lock()
        self._looping = not loop

    def watch(self, job_id: str) -> Guard:
        """A guard for a call of the job, watched until ``release``."""
        g = Guard(job_id)
        with self._lock:
            self._guards[id(g)] = g
            if not self._looping:
                self._looping = True
                # Under gevent a patched thread is a greenlet: it costs a timer a tick.
                threading.Thread(target=self._run, name="chorus-stopper", daemon=True).start()
        return g

    def release(self, g: Guard) -> None:
        with self._lock:
            self._guards.pop(id(g), None)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            try:
                self.check()
            except redis.RedisError as exc:  # the per-token check still stops calls
                log.warning("could not read cancel flags: %r", exc)

    def check(self) -> int:
        """Stop the quiet calls whose job was cancelled; how many were stopped."""
        now = time.monotonic()
        with self._lock:
            quiet = [g for g in self._guards.values()
                     if not g.stopped and now - g.last >= self.interval_s]
        if not quiet:
            return 0
        with self._client.pipeline(transaction=False) as pipe:
            for g in quiet:
                pipe.exists(cancel_key(g.job_id))
            flags = pipe.execute()
        stopped = 0
        for g, flag in zip(quiet, flags, strict=True):
            if flag:
                g.stop()
                stopped += 1
        return stopped
