"""Model specs pointing at the session's mock provider, and a mock with no latency."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.registry import Registry, parse_registry
from workers.providers.client import make_http_client

# One model per adapter (ids named after the adapter) plus an OpenAI-compatible host
# that rejects stream_options, so its stream usage has to be estimated.
RAW_REGISTRY: dict[str, Any] = {
    "providers": {
        "openai": {"adapter": "openai", "base_url": "${CHORUS_MOCK_URL}/v1"},
        "anthropic": {"adapter": "anthropic", "base_url": "${CHORUS_MOCK_URL}"},
        "gemini": {"adapter": "gemini", "base_url": "${CHORUS_MOCK_URL}"},
        "nousage": {
            "adapter": "openai",
            "base_url": "${CHORUS_MOCK_URL}/v1",
            "quirks": {"stream_usage": False},
        },
    },
    "models": {
        "openai": {"provider": "openai", "upstream": "gpt-5-mini"},
        "anthropic": {"provider": "anthropic", "upstream": "claude-haiku-4-5"},
        "gemini": {"provider": "gemini", "upstream": "gemini-3-flash"},
        "nousage": {"provider": "nousage", "upstream": "llama-3.3-70b-versatile"},
    },
}


@pytest.fixture(scope="session")
def registry(mock_url: str) -> Registry:
    return parse_registry(RAW_REGISTRY, env={"CHORUS_MOCK_URL": mock_url})


@pytest.fixture
def fast_mock(mock: httpx.Client) -> httpx.Client:
    """The mock control client, with every model answering at once."""
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 0, "token_ms": 0}).raise_for_status()
    return mock


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with make_http_client(max_connections=50) as client:
        yield client


@pytest.fixture(params=["openai", "anthropic", "gemini"])
def adapter_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)
