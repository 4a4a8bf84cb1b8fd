"""The broker transport shares one Redis client per channel, records a delivery as
unacknowledged before its dispatch, and leaves restores to the sweep (every integration
test moves its messages through it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import redis
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


KILLED_AT_DISPATCH = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import os, signal
    from kombu import Connection, Queue
    from workers.broker import TRANSPORT

    def die(body, message):
        os.kill(os.getpid(), signal.SIGKILL)  # as its task starts

    url = os.environ["BROKER_URL"]
    with Connection(url, transport=TRANSPORT) as conn:
        channel = conn.channel()
        queue = Queue("records", channel=channel)
        queue.declare()
        conn.Consumer(queue, channel=channel, callbacks=[die]).consume()
        conn.Producer(channel).publish({"n": 1}, routing_key="records")
        conn.drain_events(timeout=5)
""")


def test_a_worker_killed_as_a_task_starts_leaves_its_delivery_recorded(url: str) -> None:
    """The record a dead worker's delivery is restored from is written before the task
    is dispatched: a worker (under gevent, as they run) killed then loses nothing."""
    env = dict(os.environ, BROKER_URL=url)
    out = subprocess.run([sys.executable, "-c", KILLED_AT_DISPATCH], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    raw = redis.Redis.from_url(url)
    try:
        assert (raw.llen("records"), raw.hlen("unacked")) == (0, 1)
    finally:
        raw.delete("records", "unacked", "unacked_index")


def test_kombus_visibility_restore_is_left_to_the_sweep(url: str) -> None:
    raw = redis.Redis.from_url(url)
    with Connection(url, transport=TRANSPORT,
                    transport_options={"visibility_timeout": 0}) as conn:
        channel = conn.channel()
        channel.queue_declare("records")
        conn.Producer(channel).publish({"n": 1}, routing_key="records")
        assert channel.basic_get("records", no_ack=False) is not None
        channel.qos.restore_visible(num=10, interval=1)  # past its (zero) timeout
        assert (raw.llen("records"), raw.hlen("unacked")) == (0, 1)
        channel.qos.restore_at_shutdown = False
    raw.delete("records", "unacked", "unacked_index")
