"""Unit tests that need Redis or PostgreSQL talk to the real local servers: Redis on keys
of their own (or a database of the module's own), PostgreSQL in a database of each test
module's own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from shared.migrate import upgrade
from tests.stack import claim_redis_db, create_pg_database, drop_pg_database, release_redis_db


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(os.environ.get("CHORUS_TEST_REDIS_URL",
                                                 "redis://127.0.0.1:6379/0"))
    yield client
    client.close()


@pytest.fixture
def job_id(redis_client: redis.Redis) -> Iterator[str]:
    jid = f"unit-{uuid.uuid4()}"
    yield jid
    redis_client.delete(f"chorus:job:{jid}:events")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="module")
def redis_db_url() -> Iterator[str]:
    """A Redis database of the test module's own, for tests that flush or scan it."""
    url, token = claim_redis_db()
    try:
        yield url
    finally:
        release_redis_db(url, token)
