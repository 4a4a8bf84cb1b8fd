"""A busy worker reads each provider stream at most once per pace: fewer wake-ups per token.

A provider streams tokens a few milliseconds apart, each in a packet of its own; read
as they come, every token costs a socket read, a trip through the event loop, an
event to publish and a write at the API. A process carrying many streams instead waits
``pace_s`` between two reads of the same stream and takes whatever arrived meanwhile in
one read; its text chunks then join into one event (see ``workers.publisher``).

Only once a stream has shown its first token, and only while the process carries at
least ``from_streams`` streams: time to first token never waits, and a quiet process
still relays token by token. A token waits at most ``pace_s`` longer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx


class PacedStream(httpcore.NetworkStream):
    """A connection whose reads wait until ``pace_s`` after the previous one returned."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self.pace_s = 0.0
        self._next_read = 0.0

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self.pace_s:
            wait = self._next_read - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        data = self._inner.read(max_bytes, timeout)
        self._next_read = time.monotonic() + self.pace_s
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return PacedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class PacedBackend(httpcore.NetworkBackend):
    """httpcore's own sync backend, its connections wrapped in ``PacedStream``."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None,
                    ) -> httpcore.NetworkStream:
        return PacedStream(self._inner.connect_tcp(host, port, timeout, local_address,
                                                   socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None,
                            ) -> httpcore.NetworkStream:
        return PacedStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class PacedTransport(httpx.HTTPTransport):
    """httpx's transport over a pool that opens paced connections (HTTP/1.1, no proxy:
    what a worker uses to reach providers)."""

    def __init__(self, limits: httpx.Limits,
                 backend: httpcore.NetworkBackend | None = None) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PacedBackend(backend),
        )


@dataclass
class Pacer:
    """Counts this process's open streams and paces them while there are enough."""

    pace_s: float = 0.0
    from_streams: int = 8
    open: int = field(default=0, init=False)

    @contextmanager
    def streaming(self, response: httpx.Response) -> Iterator[StreamPace]:
        paced = response.extensions.get("network_stream")
        pace = StreamPace(self, paced if isinstance(paced, PacedStream) else None)
        self.open += 1
        try:
            yield pace
        finally:
            self.open -= 1
            # The connection goes back to the pool: its next response starts unpaced.
            if pace.stream is not None:
                pace.stream.pace_s = 0.0


@dataclass
class StreamPace:
    pacer: Pacer
    stream: PacedStream | None

    def token_seen(self) -> None:
        """A token arrived: pace the reads from now on if the process is busy."""
        if self.stream is not None:
            busy = self.pacer.pace_s > 0 and self.pacer.open >= self.pacer.from_streams
            self.stream.pace_s = self.pacer.pace_s if busy else 0.0
