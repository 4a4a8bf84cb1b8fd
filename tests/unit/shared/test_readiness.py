"""Readiness checks of pooled connections answer truly and never hand the loop over.

Run in a child process patched by gevent, as the API and workers run: a greenlet that
counts its turns shows whether a check went through the hub. Real sockets, a real Redis.
"""

from __future__ import annotations

import textwrap

from tests.child import DEFAULT_REDIS_URL, run_json

SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, os, socket, sys
    import gevent, redis
    import httpcore._backends.sync as httpcore_sync
    import redis._parsers.hiredis as redis_hiredis
    from shared import readiness

    if sys.argv[1] == "installed":
        readiness.install()
        readiness.install()  # a second call changes nothing
    turns = 0

    def spinner():
        global turns
        while True:
            turns += 1
            gevent.sleep(0)

    gevent.spawn(spinner)
    gevent.sleep(0.01)
    a, b = socket.socketpair()
    states = {}
    start = turns
    states["idle"] = httpcore_sync.is_socket_readable(a)
    states["idle_redis"] = redis_hiredis._socket_can_read(a, 0)
    b.sendall(b"x")
    states["data"] = httpcore_sync.is_socket_readable(a)
    states["data_redis"] = redis_hiredis._socket_can_read(a, 0)
    turns_in_checks = turns - start
    a.recv(1)
    b.close()
    states["closed"] = httpcore_sync.is_socket_readable(a)
    # A connection taken from redis-py's pool is checked for unread data first.
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.ping()
    pool = client.connection_pool
    start = turns
    for _ in range(20):
        pool.release(pool.get_connection())
    print(json.dumps({"states": states, "turns_in_checks": turns_in_checks,
                      "turns_in_checkouts": turns - start}))
""")


def run(mode: str) -> dict[str, object]:
    return run_json(SCRIPT, mode, timeout=30, REDIS_URL=DEFAULT_REDIS_URL)


STATES = {"idle": False, "idle_redis": False, "data": True, "data_redis": True,
          "closed": True}


def test_installed_checks_answer_truly_without_a_trip_through_the_hub() -> None:
    result = run("installed")
    assert result["states"] == STATES
    assert result["turns_in_checks"] == result["turns_in_checkouts"] == 0


def test_gevent_own_checks_do_go_through_the_hub() -> None:
    # What the swap is for: without it, each check lets other greenlets run.
    result = run("plain")
    assert result["states"] == STATES
    turns = (result["turns_in_checks"], result["turns_in_checkouts"])
    assert all(isinstance(n, int) and n > 0 for n in turns), turns
