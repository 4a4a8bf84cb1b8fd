"""Hand a dead worker's deliveries back to the queue within seconds of its leases lapsing.

kombu's Redis transport keeps every delivery a worker has not acknowledged (``unacked``,
indexed by delivery time in ``unacked_index``) and hands it out again only once the
visibility timeout (minutes) has passed: a killed worker's chat would freeze that long.
Every job and pipeline step holds a lease while it runs (``workers.lease``), so a sweep
can tell a dead worker's delivery from a live one at once: one that has been out longer
than ``GRACE_S`` and whose lease is not held, on two looks ``CONFIRM_S`` apart (a task
gives its lease back a moment before its acknowledgement), is restored, and the worker
that takes it takes the job over. After Redis failed under a worker, what it sees counts
only ``BLIND_S`` later: a Redis restarted from its files comes back without the leases
that expired while it was down, until their live owners write them again. A delivery
due later (a retry's countdown) is not dead before it is due. Tasks that take no lease
(chord bodies, health probes) are restored after the visibility timeout, as kombu would.

Every live worker sweeps; a lock that expires on its own (never released) lets one of
them sweep per ``SWEEP_S``, so a sweeper killed mid-sweep holds nobody up. The restore is
kombu's own (``QoS.restore_by_tag``: one WATCH transaction that removes the record and
requeues the message), so a delivery goes back to its queue once even if two sweeps, or a
sweep and an acknowledgement, race. Tested with kombu 5.7.0 (see ``workers.deliveries``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
import redis
from celery import Celery
from celery.signals import worker_ready

from shared.settings import get_settings
from workers.deliveries import Delivery, parse
from workers.lease import LEASE_S

log = logging.getLogger(__name__)

SWEEP_S = 1.0
# A delivery younger than this may not have taken its lease yet.
GRACE_S = float(LEASE_S)
# Longer than the moment between a task giving its lease back and its acknowledgement.
CONFIRM_S = 2.0
# After Redis failed under a sweep: a Redis restarted from its files has dropped the leases
# that expired while it was down, and their keepers (retrying with the client's backoff)
# take a few seconds to write them again. Nothing seen lease-less counts until then.
BLIND_S = float(LEASE_S)
LOCK_KEY = "chorus:requeue:lock"
# Deliveries seen without their lease, with when they were first seen so: sweeps run in
# turn on different workers, so what one saw lives in the broker's Redis for the next.
SUSPECTS_KEY = "chorus:requeue:suspects"
SUSPECTS_TTL_S = 60


@dataclass
class Sweep:
    """What one sweep decided: the tags it restored, and why."""

    dead: list[str] = field(default_factory=list)  # their lease lapsed
    expired: list[str] = field(default_factory=list)  # no lease; past the visibility timeout


class Sweeper:
    """Sweeps the broker's unacknowledged deliveries of one worker process."""

    def __init__(self, channel: Any, leases: redis.Redis, visibility_timeout_s: float) -> None:
        self._channel = channel  # a channel of kombu's Redis transport
        self._leases = leases
        self._visibility_s = visibility_timeout_s
        # Parsed records by tag: a delivery's record never changes, and a long job's is
        # looked at every sweep.
        self._known: dict[str, Delivery] = {}
        # A delivery seen lease-less is suspected from this time at the earliest.
        self._trust_from = 0.0

    def blind(self, now: float | None = None) -> None:
        """Redis failed under this worker: restore no leased delivery on what was seen
        before ``BLIND_S`` from now, while the live owners' keepers write their leases
        again."""
        self._trust_from = (time.time() if now is None else now) + BLIND_S

    def take_turn(self) -> bool:
        """Whether this worker sweeps now: one sweep per ``SWEEP_S`` among all of them."""
        with self._channel.conn_or_acquire() as broker:
            return bool(broker.set(LOCK_KEY, b"1", nx=True, px=int(SWEEP_S * 1000)))

    def sweep(self, now: float | None = None) -> Sweep:
        now = time.time() if now is None else now
        with self._channel.conn_or_acquire() as broker:
            return self._sweep(broker, now)

    def _sweep(self, broker: redis.Redis, now: float) -> Sweep:
        with broker.pipeline(transaction=False) as pipe:
            pipe.zrange(self._channel.unacked_index_key, "-inf", now - GRACE_S, byscore=True,
                        withscores=True)
            pipe.hgetall(SUSPECTS_KEY)
            out, seen = pipe.execute()
        since = {_text(t): float(s) for t, s in out}
        suspects = {_text(t): float(s) for t, s in seen.items()}
        self._learn(broker, list(since))
        leased: dict[str, str] = {}
        done = Sweep()
        for tag, at in since.items():
            d = self._known.get(tag)
            if d is None:
                continue  # acknowledged meanwhile
            due = max(at, d.eta or 0.0)
            if d.lease is None:
                if now >= due + self._visibility_s:
                    done.expired.append(tag)
            elif now >= due + GRACE_S:
                leased[tag] = d.lease
        lapsed = self._lapsed(leased)
        first = {t: max(suspects.get(t, now), min(self._trust_from, now)) for t in lapsed}
        done.dead = [t for t in lapsed if first[t] <= now - CONFIRM_S]
        waiting = {t: first[t] for t in lapsed if t not in done.dead}
        if waiting or suspects:
            with broker.pipeline(transaction=False) as pipe:
                pipe.delete(SUSPECTS_KEY)
                if waiting:
                    pipe.hset(SUSPECTS_KEY, items=[x for kv in waiting.items() for x in kv])
                    pipe.expire(SUSPECTS_KEY, SUSPECTS_TTL_S)
                pipe.execute()
        for tag in [*done.dead, *done.expired]:
            self._channel.qos.restore_by_tag(tag, broker)
            self._known.pop(tag, None)
        if done.dead or done.expired:
            log.warning("restored %d deliveries of dead workers and %d past the visibility "
                        "timeout", len(done.dead), len(done.expired))
        return done

    def _learn(self, broker: redis.Redis, tags: list[str]) -> None:
        """Parse the records of tags not seen before; forget tags no longer out."""
        current = set(tags)
        for tag in [t for t in self._known if t not in current]:
            del self._known[tag]
        new = [t for t in tags if t not in self._known]
        if not new:
            return
        records = broker.hmget(self._channel.unacked_key, new)
        for tag, record in zip(new, records, strict=True):
            if record is not None:
                self._known[tag] = parse(tag, record)

    def _lapsed(self, leased: dict[str, str]) -> list[str]:
        """The tags whose lease no live worker holds."""
        if not leased:
            return []
        holders = self._leases.mget(list(leased.values()))
        return [t for t, holder in zip(leased, holders, strict=True) if holder is None]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _sweep_forever(app: Celery, leases: redis.Redis, visibility_timeout_s: float) -> None:
    sweeper: Sweeper | None = None
    while True:
        gevent.sleep(SWEEP_S)
        try:
            if sweeper is None:
                channel = app.connection_for_write().default_channel
                sweeper = Sweeper(channel, leases, visibility_timeout_s)
            if sweeper.take_turn():
                sweeper.sweep()
        except Exception:  # a broker hiccup must not end the sweeper
            log.warning("sweeping unacknowledged deliveries failed", exc_info=True)
            if sweeper is not None:
                sweeper.blind()


def install(app: Celery, visibility_timeout_s: float) -> None:
    """Sweep from every worker of ``app`` once it is ready (on the Redis transport only:
    another broker keeps its own unacknowledged deliveries)."""
    if not str(app.conf.broker_url).startswith(("redis://", "rediss://")):
        return

    @worker_ready.connect(weak=False)
    def _start(sender: Any = None, **_: Any) -> None:
        # A client of its own for the leases: one connection, a sweep a second at most.
        leases = redis.Redis.from_url(get_settings().redis_url, socket_connect_timeout=2)
        gevent.spawn(_sweep_forever, app, leases, visibility_timeout_s)
