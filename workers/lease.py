"""A running job's lease: proof in Redis that a live worker owns it.

The owner refreshes the lease while it works. A delivery whose lease has lapsed belongs
to a dead worker: the broker's sweep (``workers.requeue``) hands it back to the queue, and
the delivery that then takes the lease takes the job over. A second delivery that finds
the lease held (a live worker runs the job) leaves the job alone.
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
# After a failed refresh (Redis restarting), try again this soon: a restarted Redis may
# have dropped the lease, and the sweep (``requeue.BLIND_S``) gives it only so long to
# come back before it hands the job to another worker.
RETRY_S = 0.5
_OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_key(name: str) -> str:
    """The Redis key of the lease ``name`` (a job id, or a step's ``step_lease``)."""
    return f"chorus:job:{name}:lease"


def step_lease(job_id: str, step_key: str) -> str:
    """The lease name of one pipeline step: its own, apart from the job's."""
    return f"{job_id}:{step_key}"


class JobBusy(Exception):
    """Another live worker holds the job's lease; try again once it could have lapsed."""


class Lease:
    def __init__(self, client: redis.Redis, name: str) -> None:
        self._client = client
        self._name = name
        self._keeper: gevent.Greenlet | None = None
        self._released = False

    def acquire(self) -> bool:
        """Take the lease unless a live worker holds it."""
        return self.acquired(self._client.set(lease_key(self._name), _OWNER, nx=True, ex=LEASE_S))

    def queue_acquire(self, pipe: redis.client.Pipeline) -> None:
        """Add the taking of the lease to ``pipe``: one round trip with other reads."""
        pipe.set(lease_key(self._name), _OWNER, nx=True, ex=LEASE_S)

    def acquired(self, reply: object) -> bool:
        """Whether the queued ``SET`` took the lease; if so, keep it fresh from now on."""
        taken = bool(reply)
        if taken:
            self._keeper = gevent.spawn(self._keep)
        return taken

    def _keep(self) -> None:
        wait: float = REFRESH_S
        while True:
            gevent.sleep(wait)
            try:
                self._client.set(lease_key(self._name), _OWNER, ex=LEASE_S)
                wait = REFRESH_S
            except redis.RedisError:
                wait = RETRY_S

    def release(self) -> None:
        if self._released:
            return
        self._stop_keeping()
        with contextlib.suppress(redis.RedisError):
            self._client.delete(lease_key(self._name))

    def queue_release(self, pipe: redis.client.Pipeline) -> None:
        """Add the giving back of the lease to ``pipe``; a later ``release`` does nothing."""
        self._stop_keeping()
        pipe.delete(lease_key(self._name))

    def hand_back(self) -> list[str]:
        """The lease's key, for the caller to delete in a write of its own; a later
        ``release`` does nothing."""
        self._stop_keeping()
        return [lease_key(self._name)]

    def _stop_keeping(self) -> None:
        self._released = True
        if self._keeper is not None:
            self._keeper.kill(block=False)
            self._keeper = None
