"""Unit tests that need Redis talk to the real local server, on keys of their own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis


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
