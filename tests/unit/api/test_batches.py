"""A batch cancelled while its POST is still submitting lines: the jobs made after the
cancel are cancelled too. Through the Flask app, against real PostgreSQL and Redis (the
jobs stay queued: no worker runs here)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import update

from api.app import create_app
from shared import keys
from shared.db import session_scope
from shared.events import cancel_key
from shared.settings import get_settings
from shared.tables import Batch, utcnow

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def app(pg_url: str, redis_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    for name in ("CHORUS_DATABASE_URL", "CHORUS_REDIS_URL", "CHORUS_BROKER_URL"):
        monkeypatch.setenv(name, pg_url if name == "CHORUS_DATABASE_URL" else redis_db_url)
    get_settings.cache_clear()
    yield create_app()
    monkeypatch.undo()
    get_settings.cache_clear()


def test_jobs_made_after_a_cancel_are_cancelled(
        app: Flask, pg_url: str, redis_db_url: str) -> None:
    with session_scope(pg_url) as s:
        key = keys.create_key(s, f"acct-{uuid.uuid4().hex[:8]}", credits=Decimal(1000),
                              tier="paid")
    made: list[str] = []

    def before_enqueue(job_id: str, _body: dict[str, Any]) -> None:
        made.append(job_id)
        if len(made) == 2:
            # A DELETE arriving meanwhile: no line stored yet, so it only marks the batch.
            with session_scope(pg_url) as s:
                s.execute(update(Batch).values(cancelled_at=utcnow()))

    app.extensions["chorus.before_enqueue"] = before_enqueue
    lines = [{"custom_id": f"q{i}", "endpoint": "chat",
              "body": {"model": "gpt-5-mini", "messages": MSG}} for i in range(4)]
    r = app.test_client().post(
        "/api/v1/batches", data="".join(json.dumps(line) + "\n" for line in lines),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/jsonl"})
    assert r.status_code == 201, r.get_data(as_text=True)
    assert r.get_json()["status"] == "cancelling"
    assert len(made) == 4
    flags = redis.Redis.from_url(redis_db_url)
    assert all(flags.exists(cancel_key(job_id)) for job_id in made)
