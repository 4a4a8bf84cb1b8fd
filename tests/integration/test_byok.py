"""BYOK end to end: stored sealed, used by the worker, no token credits, and the clear key
never in a response, a log line, a database column or Redis."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import inspect, text

from shared.db import get_engine
from shared.registry import get_registry
from tests.sse import stream_post
from tests.stack import Stack

MSG = [{"role": "user", "content": "Say something."}]
CAP = 50  # max_tokens, so a paid call's hold stays small


def body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": MSG, "max_tokens": CAP}
OWN_MODEL = "gpt-5.2"  # its provider gets the account's own key in these tests
OTHER_MODEL = "claude-sonnet-4.5"  # a model on another provider: still paid in credits


def provider_of(model_id: str) -> str:
    return get_registry().get(model_id).provider.name


def everything_in_postgres(stack: Stack) -> str:
    engine = get_engine(stack.database_url)
    out: list[str] = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            rows = conn.execute(text(f'SELECT row_to_json(t)::text FROM "{table}" t')).scalars()
            out.extend(rows)
    return "\n".join(out)


def everything_in_redis(stack: Stack) -> str:
    r = redis.Redis.from_url(stack.redis_url)
    out: list[str] = []
    for name in r.scan_iter(count=1000):
        raw_kind = r.type(name)
        kind = raw_kind if isinstance(raw_kind, str) else raw_kind.decode()
        if kind == "string":
            out.append(repr(r.get(name)))
        elif kind == "list":
            out.append(repr(r.lrange(name, 0, -1)))
        elif kind == "hash":
            out.append(repr(r.hgetall(name)))
        elif kind in ("set", "zset"):
            out.append(repr(r.smembers(name) if kind == "set" else r.zrange(name, 0, -1)))
    return "\n".join(out)


def everything_logged(stack: Stack) -> str:
    return "\n".join(p.read_text(errors="replace") for p in stack.logs.rglob("*.log"))


def test_own_key_is_used_costs_no_tokens_and_never_leaks(
    stack: Stack, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 5, "token_ms": 1, "tokens": 20})
    clear = f"sk-byok-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    provider = provider_of(OWN_MODEL)
    assert provider_of(OTHER_MODEL) != provider
    key = stack.create_key(credits=100)
    seen: list[str] = []

    def keep(resp: httpx.Response) -> None:
        resp.read()
        seen.append(f"{resp.headers}\n{resp.text}")

    with httpx.Client(base_url=stack.url, timeout=30, event_hooks={"response": [keep]},
                      headers={"Authorization": f"Bearer {key}"}) as api:
        stored = api.put(f"/api/v1/byok/{provider}", json={"api_key": clear})
        assert stored.status_code == 200, stored.text
        assert stored.json()["provider"] == provider
        listed = api.get("/api/v1/byok").json()["data"]
        assert [k["provider"] for k in listed] == [provider]
        assert set(listed[0]) == {"provider", "created_at", "updated_at"}

        own = api.post("/api/v1/chat", json=body(OWN_MODEL)).json()
        streamed = stream_post(api, "/api/v1/chat", body(OWN_MODEL))
        paid = api.post("/api/v1/chat", json=body(OTHER_MODEL)).json()
        own_job = api.get(f"/api/v1/jobs/{own['job_id']}").json()
        paid_job = api.get(f"/api/v1/jobs/{paid['job_id']}").json()
        seen.append(repr(streamed.events))
        usage = api.get("/api/v1/usage").json()
        credits = api.get("/api/v1/credits", params={"limit": 50}).json()

    # The hold left the own-key call's tokens out, and only the base fee was charged.
    assert own["status"] == "succeeded" and own["completion_tokens"] == 20
    assert own["cost"] == 0 and own["credits_charged"] == 1.0
    assert own_job["credits_reserved"] == 1.0
    assert streamed.final["credits_charged"] == 1.0
    assert paid["cost"] > 0 and paid["credits_charged"] > 1.0
    assert paid_job["credits_reserved"] > 1.0
    assert credits["balance"] == pytest.approx(100 - 2 - paid["credits_charged"], abs=1e-6)
    # The provider got the account's key (the mock records only its last four characters).
    sent = mock.get("/_mock/requests", params={"model": OWN_MODEL, "limit": 2}).json()
    assert [r["headers"]["authorization"] for r in sent] == [
        f"...{clear[-4:]}"] * 2
    other = mock.get("/_mock/requests", params={"model": "claude-sonnet-4-5", "limit": 1})
    assert clear[-4:] not in repr(other.json())
    assert {row["cost"] for row in usage["data"] if row["model"] == OWN_MODEL} == {0.0}

    # Nowhere in clear: responses, logs, any database column, any Redis value.
    needle = clear[8:]  # the random part alone
    for where, dump, control in [
        ("responses", "\n".join(seen), own["job_id"]),
        ("logs", everything_logged(stack), "chorus.run_job"),
        ("database", everything_in_postgres(stack), own["job_id"]),
        ("redis", everything_in_redis(stack), own["job_id"]),
    ]:
        assert control in dump, f"the {where} scan saw nothing"
        assert needle not in dump, f"the BYOK key leaked into {where}"
    assert f"...{clear[-4:]}" not in everything_logged(stack)


def test_delete_restores_credit_billing(stack: Stack, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 0, "token_ms": 0, "tokens": 5})
    provider = provider_of(OWN_MODEL)
    key = stack.create_key(credits=100)
    h = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stack.url, timeout=30, headers=h) as api:
        assert api.put(f"/api/v1/byok/{provider}",
                       json={"api_key": "sk-first-0000000000"}).status_code == 200
        replaced = api.put(f"/api/v1/byok/{provider}", json={"api_key": "sk-second-111111111"})
        assert replaced.status_code == 200
        first = api.post("/api/v1/chat", json=body(OWN_MODEL))
        assert first.status_code == 200, first.text
        sent = mock.get("/_mock/requests", params={"model": OWN_MODEL, "limit": 1}).json()
        assert sent[-1]["headers"]["authorization"] == "...1111", sent
        gone = api.delete(f"/api/v1/byok/{provider}")
        again = api.delete(f"/api/v1/byok/{provider}")
        after = api.post("/api/v1/chat", json=body(OWN_MODEL)).json()
        listed = api.get("/api/v1/byok").json()["data"]
    assert gone.status_code == 200 and gone.json() == {"provider": provider, "deleted": True}
    assert again.status_code == 404
    assert listed == []
    assert after["cost"] > 0 and after["credits_charged"] > 1.0


def test_keys_are_per_account(stack: Stack) -> None:
    provider = provider_of(OWN_MODEL)
    mine, theirs = stack.create_key(), stack.create_key()
    httpx.put(f"{stack.url}/api/v1/byok/{provider}", json={"api_key": "sk-mine-22222222"},
              headers={"Authorization": f"Bearer {mine}"})
    other = httpx.get(f"{stack.url}/api/v1/byok", headers={"Authorization": f"Bearer {theirs}"})
    assert other.json() == {"data": []}
    removed = httpx.delete(f"{stack.url}/api/v1/byok/{provider}",
                           headers={"Authorization": f"Bearer {theirs}"})
    assert removed.status_code == 404


@pytest.mark.parametrize(
    ("path_provider", "body", "param"),
    [
        ("no-such-provider", {"api_key": "sk-valid-3333333333"}, "provider"),
        (None, {"api_key": 12345678}, "api_key"),
        (None, {"api_key": "short"}, "api_key"),
        (None, {"api_key": "sk-has a space-SECRETPART"}, "api_key"),
        (None, {"api_key": "sk-valid-3333333333", "extra": True}, "extra"),
        (None, {}, "api_key"),
    ],
)
def test_bad_byok_requests_are_400_and_echo_nothing(
    stack: Stack, api: httpx.Client, path_provider: str | None, body: dict[str, Any],
    param: str,
) -> None:
    provider = path_provider or provider_of(OWN_MODEL)
    r = api.put(f"/api/v1/byok/{provider}", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert "SECRETPART" not in r.text and "3333333333" not in r.text
    assert api.get("/api/v1/byok").json() == {"data": []}


def test_without_a_server_secret_byok_is_503(stack: Stack) -> None:
    key = stack.create_key()
    url = stack.start_api("api-no-secret", env={"CHORUS_SECRET_KEY": ""})
    try:
        r = httpx.put(f"{url}/api/v1/byok/{provider_of(OWN_MODEL)}",
                      json={"api_key": "sk-nowhere-4444444444"},
                      headers={"Authorization": f"Bearer {key}"})
    finally:
        stack.stop_proc("api-no-secret")
    assert r.status_code == 503
    assert "CHORUS_SECRET_KEY" in r.json()["error"]["message"]
    listed = httpx.get(f"{stack.url}/api/v1/byok", headers={"Authorization": f"Bearer {key}"})
    assert listed.json() == {"data": []}
