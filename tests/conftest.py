"""Session-wide real services: the mock provider (and, for integration tests, the stack)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import free_port, start, stop, wait_http


@pytest.fixture(scope="session")
def mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (no trailing slash) of a mock provider process started for this session."""
    port = free_port()
    log = Path(tmp_path_factory.mktemp("mock")) / "mock.log"
    env = dict(os.environ, CHORUS_MOCK_PORT=str(port))
    proc = start(["workers.providers.mock", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_mock/health", proc, log)
        yield url
    finally:
        stop(proc)


@pytest.fixture
def mock(mock_url: str) -> Iterator[httpx.Client]:
    """A client of the mock's control endpoint, reset before and after each test."""
    with httpx.Client(base_url=mock_url, timeout=10) as client:
        client.post("/_mock/reset")
        yield client
        client.post("/_mock/reset")
