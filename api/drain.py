"""An API process's drain on SIGTERM: its streams resume on another process, its jobs run on.

gunicorn stops accepting connections and waits for the open ones up to its graceful
timeout (``api/gunicorn_conf.py`` sets it to the drain time). A stream left open for that
long would be cut without a final event, and its job cancelled as if its client had left.
Instead each resumable stream (Chorus SSE, WebSocket) is ended at once with a notice
that tells its client to reconnect with the last event id it received; the job goes on
on the workers and the client's next process relays the rest. A stream with no way to
resume (the OpenAI-compatible one) and a request waiting for a whole answer are left to
finish within the drain time.
"""

from __future__ import annotations

import _socket
import contextlib
import logging
import socket
import weakref
from collections.abc import Callable

import gevent
import greenlet
from flask import Flask
from gevent.event import Event

from shared import events

log = logging.getLogger(__name__)

# WebSocket close code 1012, "service restart": the server goes away, try again.
WS_SERVICE_RESTART = 1012
REASON = "server draining"


class Drain:
    """Whether this process is draining, and what to tell once it starts."""

    def __init__(self) -> None:
        self._started = Event()
        self._listeners: set[Callable[[], None]] = set()
        # Kept-alive connections waiting for their next request, by the greenlet that
        # waits: a drain ends them, or each would hold the process for the drain time.
        self._between: weakref.WeakKeyDictionary[greenlet.greenlet, socket.socket] = \
            weakref.WeakKeyDictionary()

    @property
    def draining(self) -> bool:
        return self._started.is_set()

    def start(self) -> None:
        """SIGTERM arrived (called in a greenlet of its own, see ``gunicorn_conf``)."""
        if self._started.is_set():
            return
        self._started.set()
        log.warning("draining: %d sockets told to reconnect, %d idle connections closed",
                    len(self._listeners), len(self._between))
        for listener in list(self._listeners):
            gevent.spawn(listener)
        for sock in list(self._between.values()):
            _end_reading(sock)

    def request_started(self) -> None:
        """Called in the connection's greenlet as a request begins (gunicorn's
        ``pre_request``)."""
        self._between.pop(greenlet.getcurrent(), None)

    def request_ended(self, sock: object) -> None:
        """Called in the connection's greenlet as a request ends (``post_request``): it
        may wait for another request next; once draining, gunicorn closes it instead."""
        if not self.draining and isinstance(sock, socket.socket):
            self._between[greenlet.getcurrent()] = sock

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (in a greenlet of its own) when the drain starts; returns
        the function that stops listening."""
        self._listeners.add(listener)
        if self.draining:
            gevent.spawn(listener)
        return lambda: self._listeners.discard(listener)

    def or_gone(self, gone: Callable[[], bool] | None) -> Callable[[], bool]:
        """A stream's hang-up check that also says yes once the process drains: a
        stream waiting in silence learns of the drain within its poll interval."""
        if gone is None:
            return lambda: self.draining
        return lambda: self.draining or gone()


def _end_reading(sock: socket.socket) -> None:
    """Shut the reading side of a connection gunicorn waits on: its read returns an end
    of stream and gunicorn closes the connection quietly. Done on the descriptor, not the
    gevent socket, whose own shutdown fails the waiting read with an error instead."""
    with contextlib.suppress(OSError):
        raw = _socket.socket(fileno=sock.fileno())
        try:
            raw.shutdown(socket.SHUT_RD)
        finally:
            raw.detach()


def of(app: Flask) -> Drain:
    drain: Drain = app.extensions["chorus.drain"]
    return drain


def notice(job_id: str, last_event_id: int) -> dict[str, object]:
    """The non-final event that ends a stream cut by a drain: the one a Redis failure
    sends (``events.reconnect_event``), with its own reason."""
    return {**events.reconnect_event(job_id, last_event_id), "reason": REASON,
            "message": "this server is stopping, not the job: reconnect with Last-Event-ID "
                       "to resume on another"}


def reconnect_frame(job_id: str, last_event_id: int) -> bytes:
    """The SSE frames that end a drained stream: the ``retry:`` delay, then the notice
    with no ``id`` (it is not in the replay list: the client's Last-Event-ID stays the
    last event it got)."""
    data = events.encode(notice(job_id, last_event_id))
    return events.retry_frame() + f"data: {data}\n\n".encode()
