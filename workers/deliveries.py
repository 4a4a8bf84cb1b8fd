"""Which jobs the broker still holds a message for: queued, or taken and not acknowledged.

Read from kombu's Redis transport as it stores them: a list per queue (and priority), and
the ``unacked`` hash of deliveries taken by a worker and not yet acknowledged. A job's
messages name it in their headers: a ``chorus.run_job`` task's id is the job's id (see
``api.submit.enqueue``), the tasks its pipeline sends carry it as their root id, and
every ``chorus.model_call`` shows it in its ``argsrepr``. Reading is in bounded chunks, so
no single reply is large; a message moving between a list and the hash while they are
read can be missed, which the reconciler allows for (it acts only on what two passes,
seconds apart, agree on).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from celery import Celery

CHUNK = 1000
# Job ids are UUIDs; a message's body is base64 (no '-'), so what matches is in headers.
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _named(raw: bytes, wanted: set[bytes], into: set[bytes]) -> None:
    for found in _UUID.findall(raw):
        if found in wanted:
            into.add(found)


def _queue_keys(channel: Any, queues: Iterable[str]) -> list[str]:
    return [channel._q_for_pri(q, pri) for q in queues for pri in channel.priority_steps]


def held(app: Celery, queues: Iterable[str], job_ids: Iterable[str],
         chunk: int = CHUNK) -> set[str]:
    """The ids among ``job_ids`` that some message in ``queues`` or in the unacknowledged
    deliveries names. Queues are read before the unacknowledged hash: a message taken
    meanwhile moves from the first to the second and is still seen."""
    wanted = {j.encode() for j in job_ids}
    found: set[bytes] = set()
    if not wanted:
        return set()
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        for key in _queue_keys(channel, queues):
            start = 0
            while True:
                batch = client.lrange(key, start, start + chunk - 1)
                for raw in batch:
                    _named(raw, wanted, found)
                if len(batch) < chunk:
                    break
                start += chunk
        cursor = 0
        while True:
            cursor, page = client.hscan(channel.unacked_key, cursor, count=chunk)
            for raw in page.values():
                _named(raw, wanted, found)
            if not cursor:
                break
    return {f.decode() for f in found}
