"""A broker delivery maps to the lease its task takes, read from the record kombu keeps of
it: a job's delivery to the job's lease, a pipeline step's to the step's own, anything
else to none; a retry is due at its countdown."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection

from shared.settings import Settings
from workers.app import make_celery
from workers.broker import TRANSPORT
from workers.deliveries import Delivery, parse
from workers.lease import Lease, lease_key, step_lease
from workers.pipeline import _step_task
from workers.stages import Step

QUEUE = "deliveries-test"
Take = Callable[[], list[Delivery]]


@pytest.fixture
def producer(redis_db_url: str) -> Celery:
    return make_celery(Settings(redis_url=redis_db_url, broker_url=redis_db_url))


@pytest.fixture
def take(redis_db_url: str) -> Iterator[Take]:
    """Take every message of the queue as a worker does (left unacknowledged), and read
    each back from the record kombu keeps of it."""
    raw = redis.Redis.from_url(redis_db_url)
    with Connection(redis_db_url, transport=TRANSPORT) as conn:
        channel = conn.channel()

        def deliveries() -> list[Delivery]:
            out = []
            while (m := channel.basic_get(QUEUE, no_ack=False)) is not None:
                record = raw.hget(channel.unacked_key, m.delivery_tag)
                assert record is not None
                out.append(parse(m.delivery_tag, record))
            return out

        yield deliveries
        channel.qos.restore_at_shutdown = False  # no worker gives them back
    raw.delete(QUEUE, channel.unacked_key, channel.unacked_index_key)


def test_a_job_delivery_maps_to_the_job_lease(producer: Celery, take: Take) -> None:
    job_id = str(uuid.uuid4())
    # As api.submit sends a job.
    producer.send_task("chorus.run_job", args=[job_id], queue=QUEUE, ignore_result=True)
    [d] = take()
    assert (d.task, d.lease, d.eta) == ("chorus.run_job", lease_key(job_id), None)
    # The key run_job's lease takes.
    assert Lease(redis.Redis(), job_id).hand_back() == [d.lease]


def test_a_step_delivery_maps_to_its_own_lease(producer: Celery, take: Take) -> None:
    job_id = str(uuid.uuid4())
    step = Step(key="L1:deepseek-v3.2", model="deepseek-v3.2", role="candidate",
                prompt="compare", layer=1, params={"n": 1})
    sig = _step_task(job_id, step, str(uuid.uuid4()), QUEUE)  # as a stage sends it
    producer.send_task(sig.task, args=sig.args, kwargs=sig.kwargs, queue=QUEUE)
    [d] = take()
    assert d.task == "chorus.model_call"
    assert d.lease == lease_key(step_lease(job_id, step.key)) != lease_key(job_id)
    assert Lease(redis.Redis(), step_lease(job_id, step.key)).hand_back() == [d.lease]


def test_a_retry_is_due_at_its_countdown(producer: Celery, take: Take) -> None:
    job_id = str(uuid.uuid4())
    before = time.time()
    producer.send_task("chorus.run_job", args=[job_id], queue=QUEUE, countdown=30)
    [d] = take()
    assert d.lease == lease_key(job_id)
    assert d.eta is not None and before + 29 < d.eta < time.time() + 31


def test_tasks_without_a_lease_map_to_none(producer: Celery, take: Take) -> None:
    producer.send_task("chorus.pipeline_next", args=[[], "job", "stage"], queue=QUEUE)
    producer.send_task("chorus.health_probe", queue=QUEUE, expires=60)
    assert sorted((d.task, d.lease) for d in take()) == [
        ("chorus.health_probe", None), ("chorus.pipeline_next", None)]


@pytest.mark.parametrize("record", [
    b"not json", b"[]", b"[{}]", b'[{"headers": null}]',
    json.dumps([{"headers": {"task": "chorus.run_job"}, "body": "@@",
                 "properties": {"body_encoding": "base64"}}, "", "q"]).encode(),
    json.dumps([{"headers": {"task": "chorus.model_call"}, "body": '[["j"], {}, {}]',
                 "properties": {}}, "", "q"]).encode(),
])
def test_an_unreadable_record_takes_no_lease(record: bytes) -> None:
    d = parse("tag", record)
    assert (d.tag, d.lease) == ("tag", None)


def test_an_untested_major_version_of_kombu_fails_at_import(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import kombu

    from workers import deliveries

    monkeypatch.setattr(kombu, "VERSION", kombu.VERSION._replace(major=6))
    with pytest.raises(ImportError, match=r"kombu 5\.x"):
        importlib.reload(deliveries)
    monkeypatch.undo()
    importlib.reload(deliveries)
