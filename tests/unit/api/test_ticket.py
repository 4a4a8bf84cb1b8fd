"""The ticket is written while the hold runs, under gevent as the API runs: stored with
the job, taken back when the hold fails, and a Redis that cannot take it fails the
request with 503 and releases the hold. Real PostgreSQL, real Redis, a child process."""

from __future__ import annotations

import textwrap

from tests.child import run_json

SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, os, socket, sys, types, uuid
    from decimal import Decimal
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from sqlalchemy import select
    from api.errors import ApiError
    import api.submit
    from api.submit import create_job
    from shared import events, keys, ledger
    from shared.db import session_scope
    from shared.registry import get_registry
    from shared.tables import ApiKey, Job

    mode, credits = sys.argv[1], Decimal(sys.argv[2])
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    if mode == "redis_down":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        client = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    with session_scope() as s:
        keys.create_key(s, f"acct-{uuid.uuid4().hex[:8]}", credits=credits)
        key = s.execute(select(ApiKey).order_by(ApiKey.id.desc()).limit(1)).scalar_one()
        owner = keys.KeyOwner(key.id, key.account_id, "paid", False)
    body = {"model": "gpt-5.2", "messages": [{"role": "user", "content": "hi"}]}
    job_id = uuid.uuid4()
    api.submit.uuid = types.SimpleNamespace(uuid4=lambda: job_id)
    keys_of_job = [events.request_key(str(job_id)), events.relay_key(str(job_id))]
    out = {}
    try:
        create_job(owner, "chat", body, get_registry(), client, "relay-1")
        ticket = json.loads(client.get(keys_of_job[0]))
        out["ticket"] = {k: ticket[k] for k in ("kind", "byok", "body")}
        out["relay"] = client.get(keys_of_job[1]).decode()
        client.delete(*keys_of_job)
    except ApiError as exc:
        out["error"] = [exc.status, exc.code]
        if mode != "redis_down":
            out["keys_left"] = client.exists(*keys_of_job)
    with session_scope() as s:
        wallet = ledger.wallet(s, owner.account_id)
        out["available"] = str(wallet.available)
        out["jobs"] = [j.status for j in s.execute(
            select(Job).where(Job.account_id == owner.account_id)).scalars()]
    print(json.dumps(out))
""")


def run(pg_url: str, redis_url: str, mode: str, credits: int) -> dict[str, object]:
    return run_json(SCRIPT, mode, str(credits), REDIS_URL=redis_url,
                    CHORUS_DATABASE_URL=pg_url)


BODY = {"model": "gpt-5.2", "messages": [{"role": "user", "content": "hi"}]}


def test_the_ticket_is_stored_with_the_job(pg_url: str, redis_db_url: str) -> None:
    result = run(pg_url, redis_db_url, "ok", 1000)
    assert result["ticket"] == {"kind": "chat", "byok": [], "body": BODY}
    assert result["relay"] == "relay-1"
    assert result["jobs"] == ["queued"]
    assert result["available"] != "1000.000000"  # held


def test_a_hold_that_fails_takes_its_ticket_back(pg_url: str, redis_db_url: str) -> None:
    result = run(pg_url, redis_db_url, "poor", 0)
    assert result["error"] == [402, "insufficient_credits"]
    assert result["keys_left"] == 0
    assert result["jobs"] == []


def test_a_ticket_redis_cannot_take_fails_the_request_and_releases_the_hold(
        pg_url: str, redis_db_url: str) -> None:
    result = run(pg_url, redis_db_url, "redis_down", 1000)
    assert result["error"] == [503, "unavailable"]
    assert result["jobs"] == ["failed"]
    assert result["available"] == "1000.000000"
