"""The sweep hands back a dead worker's delivery once its lease has lapsed on two looks,
exactly once, and never a delivery whose lease is held, one not yet due or one too young
to have taken its lease; a task without a lease waits for the visibility timeout."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from celery import Celery
from kombu import Connection

from shared.settings import Settings
from workers.app import make_celery
from workers.broker import TRANSPORT
from workers.lease import lease_key
from workers.requeue import BLIND_S, CONFIRM_S, GRACE_S, SUSPECTS_KEY, Sweeper

QUEUE = "requeue-test"
VISIBILITY_S = 300.0


@dataclass
class Broker:
    producer: Celery
    raw: redis.Redis
    sweeper: Sweeper
    live: Connection  # the sweeping worker's
    dead: Connection  # the connection of a worker that took messages and died

    def deliver(self, task: str, args: list[object], **options: object) -> str:
        """Send a task and take it as a worker would; its delivery tag."""
        self.producer.send_task(task, args=args, queue=QUEUE, **options)
        message = self.dead.default_channel.basic_get(QUEUE, no_ack=False)
        assert message is not None
        return str(message.delivery_tag)

    def queued(self) -> list[str]:
        """Task ids waiting in the queue."""
        return [json.loads(m)["headers"]["id"] for m in self.raw.lrange(QUEUE, 0, -1)]

    def unacked(self) -> set[str]:
        return {t if isinstance(t, str) else t.decode() for t in self.raw.hkeys("unacked")}


@pytest.fixture
def broker(redis_db_url: str) -> Iterator[Broker]:
    raw = redis.Redis.from_url(redis_db_url)
    producer = make_celery(Settings(redis_url=redis_db_url, broker_url=redis_db_url))
    with Connection(redis_db_url, transport=TRANSPORT) as dead, \
            Connection(redis_db_url, transport=TRANSPORT) as live:
        sweeper = Sweeper(live.default_channel, raw, VISIBILITY_S)
        yield Broker(producer, raw, sweeper, live, dead)
        dead.default_channel.qos.restore_at_shutdown = False  # it died: nothing given back
    raw.delete(QUEUE, "unacked", "unacked_index", SUSPECTS_KEY)


def test_a_dead_job_goes_back_once_after_two_looks(broker: Broker) -> None:
    job_id = str(uuid.uuid4())
    tag = broker.deliver("chorus.run_job", [job_id])
    now = time.time()
    # Too young to have taken its lease: not even a suspect.
    assert broker.sweeper.sweep(now).dead == []
    assert not broker.raw.exists(SUSPECTS_KEY)
    later = now + GRACE_S + 1
    assert broker.sweeper.sweep(later).dead == []  # first look: a suspect
    assert broker.raw.hkeys(SUSPECTS_KEY) == [tag.encode()]
    assert broker.sweeper.sweep(later + CONFIRM_S / 2).dead == []
    assert broker.sweeper.sweep(later + CONFIRM_S).dead == [tag]
    assert len(broker.queued()) == 1 and broker.unacked() == set()
    assert not broker.raw.exists(SUSPECTS_KEY)
    # Another sweep (another worker's, with its own memory) finds nothing to restore.
    other = Sweeper(broker.live.default_channel, broker.raw, VISIBILITY_S)
    assert other.sweep(later + CONFIRM_S).dead == []
    assert len(broker.queued()) == 1


def test_a_delivery_whose_lease_is_held_stays(broker: Broker) -> None:
    job_id = str(uuid.uuid4())
    broker.deliver("chorus.run_job", [job_id])
    broker.raw.set(lease_key(job_id), "alive", ex=60)
    try:
        now = time.time() + VISIBILITY_S * 2  # long past even the visibility timeout
        for i in range(3):
            assert broker.sweeper.sweep(now + i * CONFIRM_S).dead == []
        assert broker.queued() == [] and len(broker.unacked()) == 1
        assert not broker.raw.exists(SUSPECTS_KEY)
    finally:
        broker.raw.delete(lease_key(job_id))


def test_a_lease_back_between_the_looks_clears_the_suspicion(broker: Broker) -> None:
    """As after a Redis restart, before the live owner's keeper writes its lease again."""
    job_id = str(uuid.uuid4())
    tag = broker.deliver("chorus.run_job", [job_id])
    now = time.time() + GRACE_S + 1
    broker.sweeper.sweep(now)
    assert broker.raw.hkeys(SUSPECTS_KEY) == [tag.encode()]
    broker.raw.set(lease_key(job_id), "alive", ex=60)
    try:
        assert broker.sweeper.sweep(now + CONFIRM_S).dead == []
        assert not broker.raw.exists(SUSPECTS_KEY)
    finally:
        broker.raw.delete(lease_key(job_id))
    # Lapsed again: a new suspicion, from this look on.
    assert broker.sweeper.sweep(now + 2 * CONFIRM_S).dead == []
    assert broker.sweeper.sweep(now + 3 * CONFIRM_S).dead == [tag]


def test_after_a_redis_failure_nothing_seen_before_counts(broker: Broker) -> None:
    """Redis came back from its files without the leases that expired while it was down;
    live owners write theirs again within seconds, so the sweep looks again later."""
    tag = broker.deliver("chorus.run_job", [str(uuid.uuid4())])
    now = time.time() + GRACE_S + 1
    broker.sweeper.sweep(now)  # a suspect from before the failure
    broker.sweeper.blind(now + 1)
    for at in (now + CONFIRM_S, now + 1 + BLIND_S, now + 1 + BLIND_S + CONFIRM_S / 2):
        assert broker.sweeper.sweep(at).dead == []
    assert broker.sweeper.sweep(now + 1 + BLIND_S + CONFIRM_S).dead == [tag]


def test_a_step_is_judged_by_its_own_lease(broker: Broker) -> None:
    job_id = str(uuid.uuid4())
    step = {"key": "M:gpt-5-mini", "model": "gpt-5-mini", "role": "candidate",
            "prompt": "compare"}
    tag = broker.deliver("chorus.model_call", [job_id, step])
    broker.raw.set(lease_key(job_id), "the job's lease is not the step's", ex=60)
    try:
        now = time.time() + GRACE_S + 1
        broker.sweeper.sweep(now)
        assert broker.sweeper.sweep(now + CONFIRM_S).dead == [tag]
    finally:
        broker.raw.delete(lease_key(job_id))


def test_a_retry_is_not_dead_before_it_is_due(broker: Broker) -> None:
    tag = broker.deliver("chorus.run_job", [str(uuid.uuid4())], countdown=60)
    now = time.time()
    for at in (now + GRACE_S + 1, now + 60, now + 60 + GRACE_S - 1):
        assert broker.sweeper.sweep(at).dead == []
        assert broker.sweeper.sweep(at + CONFIRM_S).dead == []
    due = now + 60 + GRACE_S + 1
    broker.sweeper.sweep(due)
    assert broker.sweeper.sweep(due + CONFIRM_S).dead == [tag]


def test_a_task_without_a_lease_waits_for_the_visibility_timeout(broker: Broker) -> None:
    tag = broker.deliver("chorus.pipeline_next", [[], "job", "stage"])
    now = time.time()
    assert broker.sweeper.sweep(now + VISIBILITY_S - 1).expired == []
    assert broker.queued() == []
    done = broker.sweeper.sweep(now + VISIBILITY_S + 1)
    assert (done.dead, done.expired) == ([], [tag])
    assert len(broker.queued()) == 1 and broker.unacked() == set()


def test_an_acknowledged_delivery_is_left_alone(broker: Broker) -> None:
    tag = broker.deliver("chorus.run_job", [str(uuid.uuid4())])
    now = time.time() + GRACE_S + 1
    broker.sweeper.sweep(now)
    broker.dead.default_channel.basic_ack(tag)
    assert broker.sweeper.sweep(now + CONFIRM_S).dead == []
    assert broker.queued() == [] and broker.unacked() == set()
