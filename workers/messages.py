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

import base64
import json
import re
from collections.abc import Iterable
from typing import Any

from celery import Celery

CHUNK = 1000
ID_LEN = 36
# Where kombu's JSON puts the headers that name a job: three finds and slices a message,
# ten times faster than a regular expression over all of it (10,000 messages: 24 ms).
_HEADERS = b'"headers": {'
_NAMING = ((b'"id": "', 0), (b'"root_id": "', 0), (b'"argsrepr": "', 2))  # 2: past "('"
# A chord's body names the job after the results it carries (argsrepr is cut short): one
# sent within a task whose root is not the job (one enqueued before task ids were job
# ids) is found in its arguments.
_BODIES = b'"task": "chorus.pipeline_'
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _named(raw: bytes, wanted: set[bytes], into: set[bytes]) -> None:
    start = raw.find(_HEADERS)
    hit = False
    for marker, skip in _NAMING:
        at = raw.find(marker, start)
        if at < 0:
            start = -1  # not the layout expected: search it whole
            break
        at += len(marker) + skip
        name = raw[at:at + ID_LEN]
        if name in wanted:
            into.add(name)
            hit = True
    if start < 0:
        into.update(found for found in _UUID.findall(raw) if found in wanted)
    elif not hit and raw.find(_BODIES) >= 0:
        _in_arguments(raw, wanted, into)


def _in_arguments(raw: bytes, wanted: set[bytes], into: set[bytes]) -> None:
    try:
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return
    into.update(a.encode() for a in args if isinstance(a, str) and a.encode() in wanted)


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
