"""A job's ticket: what a worker needs to start it, written to Redis while the hold runs.

A worker that finds the ticket starts the provider call while it claims the job in the
database, instead of after; it is also where a zero-retention request lives (its job
row has none), and it names the relay channel of the API process that took the job,
to which the job's events then go. It must be in Redis before the job is enqueued.

Under gevent it is written by a greenlet of its own, started before the hold statement,
so the two round trips overlap; a hold that fails takes the ticket back.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import gevent
import redis
from gevent import monkey

from shared import events
from shared.keys import KeyOwner

# A job's ticket outlives any job that ends; a worker deletes it with the final event.
TICKET_TTL_S = 3600


class Ticket:
    def __init__(self, client: redis.Redis, job_id: str, owner: KeyOwner, kind: str,
                 body: dict[str, Any], relay: str | None) -> None:
        self._client = client
        self._job_id = job_id
        self._doc = {"kind": kind, "account_id": owner.account_id, "byok": [],
                     "zero_retention": owner.zero_retention, "body": body}
        self._relay = relay
        self._writing: gevent.Greenlet | None = None
        if monkey.is_module_patched("socket"):
            self._writing = gevent.spawn(self._write)

    def _write(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.set(events.request_key(self._job_id), json.dumps(self._doc), ex=TICKET_TTL_S)
        if self._relay is not None:
            pipe.set(events.relay_key(self._job_id), self._relay, ex=TICKET_TTL_S)
        pipe.execute()

    def store(self, own: list[str]) -> None:
        """Make sure the ticket is in Redis, naming the providers that run on the
        account's own keys (known once the hold is); raises ``redis.RedisError``."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.join()
            if writing.exception is not None:
                raise writing.exception
            if own == self._doc["byok"]:
                return
        self._doc["byok"] = own
        self._write()

    def withdraw(self) -> None:
        """The job was never stored: take back a ticket written meanwhile, if any."""
        writing, self._writing = self._writing, None
        if writing is None:
            return
        writing.join()
        if writing.exception is None:
            # Left behind, it would only expire with its TTL.
            with contextlib.suppress(redis.RedisError):
                self._client.delete(events.request_key(self._job_id),
                                    events.relay_key(self._job_id))
