"""Stops a cancelled job's provider calls, whether they are streaming or waiting in silence.

A cancel is announced on a Redis channel; one listener per process stops the job's
calls as the message arrives. Pub/sub is at-most-once, so one loop per process also
reads, every ``interval_s``, the cancel flags of every call the process is making, in
one round trip. Either way the call's connection is shut: its read returns at once,
even one still waiting for a first token (a model thinking, a slow upstream), and the
call ends as cancelled. (Both run as threads: greenlets under gevent.)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

import httpx
import redis

from shared.events import CANCELS_CHANNEL, cancel_key

log = logging.getLogger(__name__)


class Guard:
    """One provider call: its connection, and whether it was stopped."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.stopped = False
        self._sock: socket.socket | None = None

    def opened(self, response: httpx.Response) -> None:
        """The response headers arrived; its connection is the one to shut."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        self._sock = sock if isinstance(sock, socket.socket) else None
        if self.stopped:
            self.stop()  # cancelled while the headers were awaited

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
        self._closed = threading.Event()

    def watch(self, job_id: str) -> Guard:
        """A guard for a call of the job, watched until ``release``."""
        g = Guard(job_id)
        with self._lock:
            self._guards[id(g)] = g
            if not self._looping:
                self._looping = True
                # Under gevent a patched thread is a greenlet: it costs a timer a tick.
                threading.Thread(target=self._run, name="chorus-stopper", daemon=True).start()
                threading.Thread(target=self._listen, name="chorus-cancels",
                                 daemon=True).start()
        return g

    def release(self, g: Guard) -> None:
        with self._lock:
            self._guards.pop(id(g), None)

    def close(self) -> None:
        """Stop looking and listening (the process keeps its stopper for good; tests
        make many)."""
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.wait(self.interval_s):
            try:
                self.check()
            except Exception as exc:  # logged; nothing may end the loop but close()
                log.warning("could not read cancel flags: %r", exc)

    def _listen(self) -> None:
        while not self._closed.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CANCELS_CHANNEL)
                while not self._closed.is_set():
                    # Bounded, as the API's relay reads: a wait that never wakes would
                    # leave this process to the loop alone.
                    msg = pubsub.get_message(timeout=1.0)
                    data = msg.get("data") if msg is not None else None
                    if isinstance(data, bytes):
                        self.stop_job(data.decode())
            except Exception as exc:  # the loop still stops calls meanwhile
                if not self._closed.is_set():
                    log.warning("cancel announcements unavailable, listening again: %r",
                                exc)
                    self._closed.wait(1.0)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def stop_job(self, job_id: str) -> int:
        """Stop the calls of a job announced cancelled; how many were stopped."""
        with self._lock:
            calls = [g for g in self._guards.values() if g.job_id == job_id and not g.stopped]
        for g in calls:
            g.stop()
        return len(calls)

    def check(self) -> int:
        """Stop the calls whose job was cancelled; how many were stopped."""
        with self._lock:
            running = [g for g in self._guards.values() if not g.stopped]
        if not running:
            return 0
        with self._client.pipeline(transaction=False) as pipe:
            for g in running:
                pipe.exists(cancel_key(g.job_id))
            flags = pipe.execute()
        stopped = 0
        for g, flag in zip(running, flags, strict=True):
            if flag:
                g.stop()
                stopped += 1
        return stopped
