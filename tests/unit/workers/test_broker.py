"""The broker transport shares one Redis client per channel (every integration test
moves its messages through it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kombu import Connection

from tests.stack import claim_redis_db, release_redis_db
from workers.broker import TRANSPORT, Channel


@pytest.fixture
def url() -> Iterator[str]:
    url, token = claim_redis_db()
    try:
        yield url
    finally:
        release_redis_db(url, token)


def test_a_channel_reuses_its_client_until_its_pool_changes(url: str) -> None:
    with Connection(url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        first = channel._create_client()
        assert channel._create_client() is first
        with channel.conn_or_acquire() as client:
            assert client is first
        channel._pool = None  # as after a reconnect
        assert channel._create_client() is not first
