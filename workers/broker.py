"""The Redis broker transport, with one client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` around its connection pool for every
publish, acknowledgement and restore; each build copies the client's table of response
callbacks, which costs more than the command itself. A client is safe to share (each
command checks a connection out of the pool), so the channel keeps one per pool.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT = f"{__name__}:Transport"


class Channel(kombu_redis.Channel):
    _shared: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        # A new pool (after a reconnect) gets a new client.
        if self._shared is None or self._shared.connection_pool is not self.pool:
            self._shared = super()._create_client()
        return self._shared


class Transport(kombu_redis.Transport):
    Channel = Channel
