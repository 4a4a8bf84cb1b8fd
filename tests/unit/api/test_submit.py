"""A job whose ticket cannot reach Redis after its hold is abandoned: 503, the hold
released, the job failed, nothing charged."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import select

from api.errors import ApiError
from api.submit import create_job
from shared import keys, ledger
from shared.db import session_scope
from shared.registry import get_registry
from shared.settings import get_settings
from shared.tables import ApiKey, Job


def redis_down() -> redis.Redis:
    """A client of a port nothing listens on: every command fails to connect."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1,
                       retry=Retry(NoBackoff(), 0))


@pytest.fixture
def database(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``pg_url`` as the settings' database, which ``create_job`` uses."""
    monkeypatch.setenv("CHORUS_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    yield pg_url
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.parametrize("zero_retention", [False, True])
def test_a_ticket_that_cannot_be_stored_releases_the_hold(
        database: str, zero_retention: bool) -> None:
    pg_url = database
    with session_scope(pg_url) as s:
        keys.create_key(s, f"acct-{uuid.uuid4().hex[:8]}", credits=Decimal(1000),
                        zero_retention=zero_retention)
        key = s.execute(select(ApiKey).order_by(ApiKey.id.desc()).limit(1)).scalar_one()
        owner = keys.KeyOwner(key.id, key.account_id, "free", zero_retention)
    body = {"model": "gpt-5.2", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ApiError) as err:
        create_job(owner, "chat", body, get_registry(), redis_down())
    assert err.value.status == 503 and err.value.code == "unavailable"
    with session_scope(pg_url) as s:
        wallet = ledger.wallet(s, owner.account_id)
        assert wallet.balance == Decimal(1000) and wallet.available == Decimal(1000)
        job = s.execute(select(Job).where(Job.account_id == owner.account_id)).scalar_one()
        assert job.status == "failed" and job.credits_charged == Decimal(0)
