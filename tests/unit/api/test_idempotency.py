"""Idempotency keys: which header values are keys, which bodies are the same request, and
what the key's row decides on real PostgreSQL (a retry, another body, another account,
an expired key)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, update

from api import idempotency
from api.errors import ApiError
from api.submit import create_job
from shared import keys
from shared.db import session_scope
from shared.migrate import upgrade
from shared.registry import get_registry
from shared.schemas import ChatRequest
from shared.settings import get_settings
from shared.tables import ApiKey, IdempotencyKey, Job, LedgerEntry


@pytest.mark.parametrize("raw", ["a", "x" * 255, "order 42/retry #1", "~!@#$%^&*()_+{}|:<>?"])
def test_printable_ascii_up_to_255_is_a_key(raw: str) -> None:
    assert idempotency.parse_key(raw) == raw


@pytest.mark.parametrize("raw", ["", "x" * 256, "caf\u00e9", "tab\there", "line\nbreak",
                                 "nul\x00", "del\x7f"])
def test_anything_else_is_a_400_naming_the_header(raw: str) -> None:
    with pytest.raises(ApiError) as err:
        idempotency.parse_key(raw)
    assert err.value.status == 400 and err.value.param == "Idempotency-Key"


def test_no_header_no_key() -> None:
    assert idempotency.parse_key(None) is None


def canonical(text: str) -> object:
    return ChatRequest.model_validate_json(text).model_dump(mode="json", exclude_none=True)


def test_the_same_request_spelt_differently_has_one_hash() -> None:
    a = '{"model":"gpt-5.2","messages":[{"role":"user","content":"hi"}]}'
    b = ('{ "messages": [ {"content": "hi", "role": "user"} ],\n "model": "gpt-5.2",'
         ' "stream": false, "temperature": null, "keep_running": false }')
    assert idempotency.request_hash("chat", canonical(a)) == \
        idempotency.request_hash("chat", canonical(b))


@pytest.mark.parametrize("change", [
    {"model": "gpt-5-mini"}, {"stream": True}, {"temperature": 0.5}, {"max_tokens": 9},
    {"messages": [{"role": "user", "content": "hi!"}]},
])
def test_any_change_is_another_request(change: dict[str, object]) -> None:
    base = {"model": "gpt-5.2", "messages": [{"role": "user", "content": "hi"}]}
    one = idempotency.request_hash("chat", canonical(json.dumps(base)))
    other = idempotency.request_hash("chat", canonical(json.dumps({**base, **change})))
    assert one != other


def test_the_same_body_on_another_endpoint_is_another_request() -> None:
    body = canonical('{"model":"gpt-5.2","messages":[{"role":"user","content":"hi"}]}')
    assert idempotency.request_hash("chat", body) != \
        idempotency.request_hash("openai.chat_completions", body)


@pytest.fixture
def database(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``pg_url`` as the settings' database, which ``resolve`` reads."""
    monkeypatch.setenv("CHORUS_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    yield pg_url
    monkeypatch.undo()
    get_settings.cache_clear()


def new_account(url: str) -> int:
    with session_scope(url) as s:
        keys.create_key(s, f"acct-{uuid.uuid4().hex[:8]}", credits=Decimal(10))
        key = s.execute(select(ApiKey).order_by(ApiKey.id.desc()).limit(1)).scalar_one()
        return key.account_id


def store_job(url: str, account_id: int, claim: idempotency.Claim) -> str:
    """A job and its key in one transaction, as ``api.submit`` stores them."""
    job_id = str(uuid.uuid4())
    with session_scope(url) as s:
        s.add(Job(id=job_id, account_id=account_id, kind="chat", status="queued"))
        s.flush()
        idempotency.store(s, account_id, claim, job_id=job_id)
    return job_id


def test_a_used_key_names_its_job_and_refuses_another_body(database: str) -> None:
    account = new_account(database)
    first = idempotency.Claim("k-1", "chat", "a" * 64)
    job_id = store_job(database, account, first)
    with pytest.raises(idempotency.KeyTaken):
        store_job(database, account, first)
    assert idempotency.resolve(account, first).job_id == job_id
    with pytest.raises(ApiError) as err:
        idempotency.resolve(account, idempotency.Claim("k-1", "chat", "b" * 64))
    assert err.value.status == 409 and err.value.code == "idempotency_conflict"
    # The failed second store left nothing behind: one job, one key.
    with session_scope(database) as s:
        assert len(s.execute(select(Job).where(Job.account_id == account)).all()) == 1


def test_keys_are_per_account(database: str) -> None:
    claim = idempotency.Claim("shared-name", "chat", "a" * 64)
    one, two = new_account(database), new_account(database)
    assert store_job(database, one, claim) != store_job(database, two, claim)


def test_an_expired_key_is_free_again_and_expired_keys_go(any_database: str) -> None:
    url = any_database
    account, other = new_account(url), new_account(url)
    old = idempotency.Claim("k-old", "chat", "a" * 64)
    store_job(url, account, old)
    store_job(url, account, idempotency.Claim("k-mine", "chat", "a" * 64))
    store_job(url, other, idempotency.Claim("k-theirs", "chat", "a" * 64))
    with session_scope(url) as s:
        s.execute(update(IdempotencyKey)
                  .where(IdempotencyKey.account_id.in_([account, other]))
                  .values(created_at=datetime.now(UTC) - timedelta(hours=24, seconds=1)))
    with pytest.raises(ApiError) as err:
        idempotency.resolve(account, old)  # expired: it names nothing any more
    assert err.value.code == "idempotency_in_progress"
    job_id = store_job(url, account, idempotency.Claim("k-old", "chat", "c" * 64))
    with session_scope(url) as s:
        rows = s.execute(select(IdempotencyKey).where(
            IdempotencyKey.account_id.in_([account, other]))).scalars().all()
        # The reused key is new; the other expired ones, of any account, are gone.
        assert [(r.key, r.job_id) for r in rows] == [("k-old", job_id)]


@pytest.fixture(params=["postgresql", "sqlite"])
def any_database(request: pytest.FixtureRequest, pg_url: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each engine as the settings' database, which ``create_job`` uses."""
    url = pg_url
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'chorus.db'}"
        upgrade(url)
    monkeypatch.setenv("CHORUS_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    monkeypatch.undo()
    get_settings.cache_clear()


def owner_with(url: str, credits: int) -> keys.KeyOwner:
    with session_scope(url) as s:
        keys.create_key(s, f"acct-{uuid.uuid4().hex[:8]}", credits=Decimal(credits))
        key = s.execute(select(ApiKey).order_by(ApiKey.id.desc()).limit(1)).scalar_one()
        return keys.KeyOwner(key.id, key.account_id, "paid", False)


BODY = {"model": "gpt-5.2", "messages": [{"role": "user", "content": "hi"}]}


def test_create_job_stores_the_key_with_the_job_and_replays_it(
    any_database: str, redis_client: redis.Redis
) -> None:
    owner = owner_with(any_database, 1000)
    claim = idempotency.Claim("k", "chat", idempotency.request_hash("chat", BODY))
    job_id, _hold = create_job(owner, "chat", BODY, get_registry(), redis_client, None, claim)
    with pytest.raises(idempotency.KeyUsed) as used:
        create_job(owner, "chat", BODY, get_registry(), redis_client, None, claim)
    assert used.value.job_id == job_id
    with session_scope(any_database) as s:
        kinds = s.execute(select(LedgerEntry.kind)
                          .where(LedgerEntry.account_id == owner.account_id)).scalars().all()
        assert sorted(kinds) == ["grant", "reserve"]
        assert s.execute(select(IdempotencyKey.job_id).where(
            IdempotencyKey.account_id == owner.account_id)).scalars().all() == [job_id]
    redis_client.delete(f"chorus:job:{job_id}:request", f"chorus:job:{job_id}:relay")


def test_a_refused_hold_stores_no_key(any_database: str, redis_client: redis.Redis) -> None:
    owner = owner_with(any_database, 0)
    claim = idempotency.Claim("k", "chat", idempotency.request_hash("chat", BODY))
    with pytest.raises(ApiError) as err:
        create_job(owner, "chat", BODY, get_registry(), redis_client, None, claim)
    assert err.value.status == 402
    with session_scope(any_database) as s:
        assert s.execute(select(IdempotencyKey).where(
            IdempotencyKey.account_id == owner.account_id)).first() is None
        assert s.execute(select(Job).where(Job.account_id == owner.account_id)).first() is None
