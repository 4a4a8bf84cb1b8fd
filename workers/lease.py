"""A running job's lease: proof in Redis that a live worker owns it.

The broker hands an unacknowledged task to another worker once its visibility timeout
passes, which for a long stream happens while the first worker is still running it.
The owner refreshes the lease while it works; a second delivery that finds the lease
held leaves the job alone, and one that finds it expired (the owner died) takes over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid

import gevent
import redis

LEASE_S = 15
REFRESH_S = 5
_OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _key(job_id: str) -> str:
    return f"chorus:job:{job_id}:lease"


class JobBusy(Exception):
    """Another live worker holds the job's lease; try again once it could have lapsed."""


class Lease:
    def __init__(self, client: redis.Redis, job_id: str) -> None:
        self._client = client
        self._job_id = job_id
        self._keeper: gevent.Greenlet | None = None
        self._released = False

    def acquire(self) -> bool:
        """Take the lease unless a live worker holds it."""
        return self.acquired(self._client.set(_key(self._job_id), _OWNER, nx=True, ex=LEASE_S))

    def queue_acquire(self, pipe: redis.client.Pipeline) -> None:
        """Add the taking of the lease to ``pipe``: one round trip with other reads."""
        pipe.set(_key(self._job_id), _OWNER, nx=True, ex=LEASE_S)

    def acquired(self, reply: object) -> bool:
        """Whether the queued ``SET`` took the lease; if so, keep it fresh from now on."""
        taken = bool(reply)
        if taken:
            self._keeper = gevent.spawn(self._keep)
        return taken

    def _keep(self) -> None:
        while True:
            gevent.sleep(REFRESH_S)
            try:
                self._client.set(_key(self._job_id), _OWNER, ex=LEASE_S)
            except redis.RedisError:
                continue

    def release(self) -> None:
        if self._released:
            return
        self._stop_keeping()
        with contextlib.suppress(redis.RedisError):
            self._client.delete(_key(self._job_id))

    def queue_release(self, pipe: redis.client.Pipeline) -> None:
        """Add the giving back of the lease to ``pipe``; a later ``release`` does nothing."""
        self._stop_keeping()
        pipe.delete(_key(self._job_id))

    def hand_back(self) -> list[str]:
        """The lease's key, for the caller to delete in a write of its own; a later
        ``release`` does nothing."""
        self._stop_keeping()
        return [_key(self._job_id)]

    def _stop_keeping(self) -> None:
        self._released = True
        if self._keeper is not None:
            self._keeper.kill(block=False)
            self._keeper = None
