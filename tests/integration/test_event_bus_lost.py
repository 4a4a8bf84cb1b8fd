"""Redis killed under a running job and restarted EMPTY: a client resuming with its old
``Last-Event-ID`` gets the job's new list from its start, a ``retry`` (reason ``events
lost``) first, after which each call's text is whole: what it joins after its last retry
is the call's ``full_content``; the stream ends with the final, and the job is charged
once.

The stack runs on a Redis server of the test's own (see ``test_event_bus_outage``),
whose append-only file is dropped before the restart.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket

from shared.migrate import upgrade
from tests.integration import test_event_bus_outage as outage
from tests.integration.test_event_bus_outage import OwnRedis, Read, balance, read_sse, settle
from tests.integration.test_ws import Socket
from tests.procs import start
from tests.stack import Stack, create_pg_database, drop_pg_database

# The outage module's Redis server of its own (one for this module), and its fixtures.
own_redis = outage.own_redis
clean_breakers = outage.clean_breakers
api = outage.api


@pytest.fixture(scope="module")
def outage_stack(mock_url: str, own_redis: OwnRedis,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The outage module's stack, with beat running the reconciler every second: a
    pipeline whose state and messages went with Redis starts over once it is 8 s old
    (after the calls the tests start have ended: two runs of one call at once are the
    reconciler's matter, not this module's)."""
    logs = Path(tmp_path_factory.mktemp("lost-stack"))
    db_url = create_pg_database()
    upgrade(db_url)
    env = dict(
        os.environ,
        CHORUS_DATABASE_URL=db_url, CHORUS_REDIS_URL=own_redis.url, CHORUS_MOCK_URL=mock_url,
        CHORUS_DATA_DIR=str(logs), CHORUS_IDLE_TIMEOUT="10", CHORUS_CONNECT_TIMEOUT="2",
        CHORUS_RATE_LIMIT_SCALE="1000", CHORUS_RECONCILE_S="1",
        CHORUS_RECONCILE_GRACE_S="8", CHORUS_HEALTH_INTERVAL="3600",
        CHORUS_SECRET_KEY="integration-test-secret-0123456789",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    s = Stack(url="", mock_url=mock_url, database_url=db_url, redis_url=own_redis.url,
              env=env, logs=logs)
    try:
        s.start_worker(concurrency=20)
        s.url = s.start_api()
        s.procs["beat"] = start(["celery", "--app", "workers.app", "beat", "--loglevel",
                                 "info", "--schedule", str(logs / "beat-schedule")],
                                env, logs / "beat.log")
        yield s
    finally:
        s.shutdown()
        drop_pg_database(db_url)

MSG = [{"role": "user", "content": "Tell me about outages, at length."}]
SLOW = {"model": "*", "ttft_ms": 10, "token_ms": 40, "tokens": 120}


def after_last_retry(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last = max((i for i, e in enumerate(evs) if e.get("event") == "retry"), default=-1)
    return evs[last + 1:]


def break_off(api: httpx.Client, own_redis: OwnRedis, path: str,
              body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Start a stream and kill Redis after its tenth event: the job's id and the
    stream's reconnect notice."""
    killed: list[float] = []

    def kill_after_some(read: Read) -> None:
        if not killed and len(read.events) >= 10:
            own_redis.kill()
            killed.append(time.monotonic())

    with api.stream("POST", path, json=body, timeout=httpx.Timeout(30.0)) as resp:
        job_id = resp.headers["X-Chorus-Job-Id"]
        first = read_sse(resp, Read(), kill_after_some)
    assert killed, "the stream ended before Redis was killed"
    notice = first.events[-1]
    assert notice["event"] == "reconnect" and not first.done
    return job_id, notice


def test_a_chat_resumed_after_redis_restarted_empty_has_its_whole_text(
    api: httpx.Client, mock: httpx.Client, own_redis: OwnRedis
) -> None:
    mock.post("/_mock/config", json=SLOW)
    before = balance(api)
    body = {"model": "gpt-5.2", "messages": MSG, "stream": True}
    job_id, notice = break_off(api, own_redis, "/api/v1/chat", body)
    own_redis.start(empty=True)
    with api.stream("GET", f"/api/v1/jobs/{job_id}/events",
                    headers={"Last-Event-ID": str(notice["last_event_id"])},
                    timeout=httpx.Timeout(30.0)) as resp:
        assert resp.status_code == 200
        rest = read_sse(resp, Read())
    assert rest.done and rest.events[-1]["final"], rest.events[-3:]
    # The new list from its start: the retry first, ids above every id of the old list,
    # one after another.
    assert rest.events[0] == {**rest.events[0], "event": "retry", "reason": "events lost"}
    ids = [i for i in rest.ids if i is not None]
    assert ids[0] > notice["last_event_id"]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    final = rest.events[-1]
    assert final["status"] == "succeeded"
    text = "".join(e.get("delta", "") for e in after_last_retry(rest.events)
                   if e.get("event") == "chunk")
    assert text == final["full_content"] and len(text) > 0

    job = settle(api, job_id)
    assert job["credits_charged"] == final["credits_charged"]
    assert before - balance(api) == Decimal(str(job["credits_charged"]))


def test_a_socket_follow_after_redis_restarted_empty_gets_the_retry_and_whole_text(
    outage_stack: Stack, api: httpx.Client, mock: httpx.Client, own_redis: OwnRedis
) -> None:
    mock.post("/_mock/config", json=SLOW)
    key = api.headers["Authorization"].removeprefix("Bearer ")
    conn = websocket.create_connection(
        outage_stack.url.replace("http://", "ws://") + "/api/v1/ws", timeout=20,
        header=[f"Authorization: Bearer {key}"])
    try:
        sock = Socket(conn)
        assert sock.recv() == {"type": "ready"}
        sock.send({"type": "chat", "id": "c", "model": "gpt-5.2", "messages": MSG,
                   "keep_running": True})
        job_id = sock.until(lambda m: m["type"] == "event" and m["seq"] >= 10)[0]["job_id"]
        own_redis.kill()
        notice = sock.until(lambda m: m["type"] != "event")[-1]
        assert notice["type"] == "reconnect"
        own_redis.start(empty=True)
        sock.send({"type": "follow", "id": "c", "job_id": job_id, "after": notice["after"]})
        rest = sock.until(lambda m: m["type"] in ("done", "error", "reconnect"))
    finally:
        conn.close()
    assert rest[-1]["type"] == "done"
    got = [m for m in rest if m["type"] == "event"]
    assert got[0]["data"]["event"] == "retry" and got[0]["seq"] > notice["after"]
    assert [m["seq"] for m in got] == list(range(got[0]["seq"], got[0]["seq"] + len(got)))
    evs = [m["data"] for m in got]
    text = "".join(e.get("delta", "") for e in after_last_retry(evs) if e.get("event") == "chunk")
    assert evs[-1]["final"] and text == evs[-1]["full_content"]


def test_a_compare_resumed_after_redis_restarted_empty_has_each_calls_whole_text(
    api: httpx.Client, mock: httpx.Client, own_redis: OwnRedis
) -> None:
    mock.post("/_mock/config", json=SLOW)
    before = balance(api)
    models = ["gpt-5.2", "claude-sonnet-4.5"]
    body = {"models": models, "messages": MSG, "stream": True, "keep_running": True}
    job_id, notice = break_off(api, own_redis, "/api/v1/compare", body)
    own_redis.start(empty=True)
    # The calls go on into the list made again; the pipeline's join went with Redis, so
    # the reconciler runs the job again (a "worker lost" retry) and that run ends it.
    with api.stream("GET", f"/api/v1/jobs/{job_id}/events",
                    headers={"Last-Event-ID": str(notice["last_event_id"])},
                    timeout=httpx.Timeout(60.0)) as resp:
        assert resp.status_code == 200
        rest = read_sse(resp, Read())
    assert rest.done and rest.events[-1]["final"], rest.events[-3:]
    assert rest.events[0] == {**rest.events[0], "event": "retry", "reason": "events lost"}
    assert rest.ids[0] is not None and rest.ids[0] > notice["last_event_id"]
    # After the lost events' retry, each call's text is whole: what it said again, then
    # the rest of it, up to its end.
    lost = after_last_retry(rest.events[:next(
        (i for i, e in enumerate(rest.events) if e.get("reason") == "worker lost"),
        len(rest.events))])
    assert sorted(e["model"] for e in lost if e.get("done")) == sorted(models)
    for e in lost:
        if e.get("done"):
            said = "".join(c["delta"] for c in lost
                           if c.get("model") == e["model"] and c.get("done") is False)
            assert said == e["full_content"], e["model"]
    text: dict[str, str] = {}
    full: dict[str, str] = {}
    for e in after_last_retry(rest.events[:-1]):
        if e.get("event") == "chunk" and e.get("done"):
            full[e["model"]] = e["full_content"]
        elif e.get("event") == "chunk":
            text[e["model"]] = text.get(e["model"], "") + e["delta"]
    final = rest.events[-1]
    assert final["status"] == "succeeded", final
    answers = {r["model"]: r["full_content"] for r in final["results"]}
    assert text == full == answers and sorted(answers) == sorted(models)

    job = settle(api, job_id)
    assert job["credits_charged"] == final["credits_charged"]
    assert before - balance(api) == Decimal(str(job["credits_charged"]))
