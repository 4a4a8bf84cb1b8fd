"""The broker transport shares one Redis client per channel, and records a delivery as
unacknowledged beside its dispatch, never after its acknowledgement (every integration
test moves its messages through it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from kombu import Connection

from workers.broker import TRANSPORT, Channel


@pytest.fixture
def url(redis_db_url: str) -> str:
    return redis_db_url


def test_a_channel_reuses_its_client_until_its_pool_changes(url: str) -> None:
    with Connection(url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        first = channel._create_client()
        assert channel._create_client() is first
        with channel.conn_or_acquire() as client:
            assert client is first
        channel._pool = None  # as after a reconnect
        assert channel._create_client() is not first


RECORDS = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, os, sys
    import redis
    from kombu import Connection, Queue
    from workers.broker import TRANSPORT

    url = os.environ["BROKER_URL"]
    raw = redis.Redis.from_url(url)
    out = {}
    with Connection(url, transport=TRANSPORT) as conn:
        channel = conn.channel()
        queue = Queue("records", channel=channel)
        queue.declare()
        got = []
        consumer = conn.Consumer(queue, callbacks=[lambda body, m: got.append(m)],
                                 channel=channel)
        consumer.consume()
        import gevent
        qos, record = channel.qos, channel.qos._record

        def slow_record(*args):
            gevent.sleep(0.2)  # a slow round trip: the delivery is dispatched meanwhile
            record(*args)

        qos._record = slow_record

        def deliver(body):
            conn.Producer(channel).publish(body, routing_key="records")
            conn.drain_events(timeout=5)
            m = got.pop()
            # Dispatched before its record was written.
            return m, raw.hexists(channel.unacked_key, m.delivery_tag)

        m, out["recorded_at_dispatch"] = deliver({"n": 1})
        m.ack()  # acknowledged before the record was written: nothing left behind
        gevent.sleep(0.3)
        out["left_after_ack"] = raw.hlen(channel.unacked_key)
        m, _ = deliver({"n": 2})
        gevent.sleep(0.3)
        out["recorded_later"] = raw.hexists(channel.unacked_key, m.delivery_tag)
        m, _ = deliver({"n": 3})
        channel.qos.restore_unacked()  # as at shutdown: both go back to the queue
        out["restored"] = sorted(
            m.decode()["n"] for m in iter(lambda: queue.get(no_ack=True), None))
    print(json.dumps(out))
""")


def test_a_delivery_is_dispatched_before_its_record_and_acked_after_it(url: str) -> None:
    env = dict(os.environ, BROKER_URL=url)
    out = subprocess.run([sys.executable, "-c", RECORDS], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "recorded_at_dispatch": False, "left_after_ack": 0, "recorded_later": True,
        "restored": [2, 3]}
