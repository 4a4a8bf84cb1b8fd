"""The Redis broker transport: one client per channel, and restores left to the sweep.

kombu's Redis channel builds a new ``redis.Redis`` around its connection pool for every
publish, acknowledgement and restore; each build copies the client's table of response
callbacks, which costs more than the command itself. A client is safe to share (each
command checks a connection out of the pool), so the channel keeps one per pool.

kombu records each delivery as unacknowledged (the copy a dead worker's task is restored
from) before the task starts, in a round trip the dispatch waits for. Written beside the
task's start instead, the record is lost with a worker killed as the task starts, and the
delivery with it; the round trip saved is within the noise of ``bench.gateway``
(bench/RESULTS.md). kombu's own restore of deliveries past the visibility timeout is
left to ``workers.requeue``, which knows a live worker's long job from a dead one's.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT = f"{__name__}:Transport"


class QoS(kombu_redis.QoS):
    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """Nothing: kombu would restore every delivery past the visibility timeout from
        its polling loop, a live long job's too. ``workers.requeue`` restores a delivery
        once its lease shows its worker dead, and a task without a lease after the
        timeout."""


class Channel(kombu_redis.Channel):
    QoS = QoS
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
