"""The Redis broker transport: one client per channel, and deliveries dispatched at once.

kombu's Redis channel builds a new ``redis.Redis`` around its connection pool for every
publish, acknowledgement and restore; each build copies the client's table of response
callbacks, which costs more than the command itself. A client is safe to share (each
command checks a connection out of the pool), so the channel keeps one per pool.

kombu also records each delivery as unacknowledged (the copy a dead worker's task is
restored from) in a round trip the task waits for. Under gevent the record is written by
a greenlet of its own while the task starts; the task's acknowledgement waits for it.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
from gevent import monkey
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

TRANSPORT = f"{__name__}:Transport"


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recording: dict[str, gevent.Greenlet] = {}

    def append(self, message: Any, delivery_tag: str) -> None:
        if not monkey.is_module_patched("socket"):
            super().append(message, delivery_tag)
            return
        # The in-memory side first, as kombu does: prefetch counts it at once.
        virtual.QoS.append(self, message, delivery_tag)
        self._recording[delivery_tag] = gevent.spawn(self._record, message, delivery_tag)

    def _record(self, message: Any, delivery_tag: str) -> None:
        """kombu's own record of an unacknowledged delivery (``QoS.append``)."""
        delivery = message.delivery_info
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()}).hset(
                self.unacked_key, delivery_tag,
                dumps([message._raw, delivery["exchange"], delivery["routing_key"]]),
            ).execute()

    def _recorded(self, delivery_tag: str) -> None:
        """Wait for the record: a removal must not run before the write it removes."""
        recording = self._recording.pop(delivery_tag, None)
        if recording is not None:
            recording.join()

    def ack(self, delivery_tag: str) -> None:
        self._recorded(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._recorded(delivery_tag)
        super().reject(delivery_tag, requeue)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """Nothing: kombu would restore every delivery past the visibility timeout from
        its polling loop, a live long job's too. ``workers.requeue`` restores a delivery
        once its lease shows its worker dead, and a task without a lease after the
        timeout."""

    def restore_unacked(self, client: Any = None) -> None:
        for tag in list(self._recording):
            self._recorded(tag)
        super().restore_unacked(client)


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
