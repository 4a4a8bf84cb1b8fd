"""Integration tests share one real stack per session (see ``tests/stack.py``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared.migrate import upgrade
from tests.stack import (
    Stack,
    claim_redis_db,
    create_pg_database,
    drop_pg_database,
    release_redis_db,
)


@pytest.fixture(scope="session")
def stack(mock_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = Path(tmp_path_factory.mktemp("stack"))
    db_url = create_pg_database()
    redis_url, token = claim_redis_db()
    upgrade(db_url)
    env = dict(
        os.environ,
        CHORUS_DATABASE_URL=db_url,
        CHORUS_REDIS_URL=redis_url,
        CHORUS_MOCK_URL=mock_url,
        CHORUS_DATA_DIR=str(logs),
        CHORUS_IDLE_TIMEOUT="3",
        CHORUS_CONNECT_TIMEOUT="2",
        CHORUS_RATE_LIMIT_SCALE="1000", CHORUS_SECRET_KEY="integration-test-secret-0123456789",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    s = Stack(url="", mock_url=mock_url, database_url=db_url, redis_url=redis_url, env=env,
              logs=logs)
    try:
        s.start_worker()
        s.url = s.start_api()
        yield s
    finally:
        s.shutdown()
        release_redis_db(redis_url, token)
        drop_pg_database(db_url)


@pytest.fixture
def key(stack: Stack) -> str:
    return stack.create_key(credits=10_000)


@pytest.fixture
def api(stack: Stack, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


@pytest.fixture(autouse=True)
def clean_breakers(stack: Stack) -> Iterator[None]:
    """Breaker and model-health state in Redis cleared before and after every test: a
    model another test made fail must not be skipped here."""

    def reset() -> None:
        client = redis.Redis.from_url(stack.redis_url)
        keys = list(client.scan_iter("chorus:model:*"))
        if keys:
            client.delete(*keys)

    reset()
    yield
    reset()
