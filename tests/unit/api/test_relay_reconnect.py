"""The shared relay replaces a connection that stays silent while subscriptions wait, and
its reader outlives any error.

Run in a child process patched by gevent, as the API runs, against the real Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import os, sys, uuid
    import gevent, redis
    from gevent.event import Event
    from api.relay import Relay

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    relay = Relay(client)
    relay.READ_TIMEOUT_S = 0.2
    job = f"unit-{uuid.uuid4()}"
    with relay.watch(job) as w:
        port = relay._pubsub.connection._sock.getsockname()[1]
        # A confirmation that never comes, as when the reader missed its socket's data.
        relay._confirm["chorus:ev:never"] = [Event()]
        gevent.sleep(0.8)
        relay._confirm.pop("chorus:ev:never")
        new_port = relay._pubsub.connection._sock.getsockname()[1]
        # The new connection carries the watched channel again.
        client.publish(f"chorus:ev:{job}", "1\\n{}")
        item = w.get(timeout=2)
    print(port != new_port, item)
""")


def test_a_silent_connection_is_replaced_and_resubscribed() -> None:
    env = dict(os.environ, REDIS_URL=os.environ.get("CHORUS_TEST_REDIS_URL",
                                                     "redis://127.0.0.1:6379/0"))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "True (1, '{}')"


SURVIVES = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import os, uuid
    import gevent, redis
    from api.relay import Relay

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    relay = Relay(client)
    job = f"unit-{uuid.uuid4()}"
    real = relay._pubsub.get_message
    failures = [RuntimeError("socket used by another greenlet")]

    def flaky(**kwargs):
        if failures:
            raise failures.pop()
        return real(**kwargs)

    relay._pubsub.get_message = flaky
    with relay.watch(job) as w:
        gevent.sleep(0.5)
        client.publish(f"chorus:ev:{job}", "1\\n{}")
        print(w.get(timeout=3))
""")


def test_the_reader_outlives_an_unexpected_error() -> None:
    env = dict(os.environ, REDIS_URL=os.environ.get("CHORUS_TEST_REDIS_URL",
                                                     "redis://127.0.0.1:6379/0"))
    out = subprocess.run([sys.executable, "-c", SURVIVES], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "(1, '{}')"
