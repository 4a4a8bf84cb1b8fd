"""Adapters, model specs and an in-process mock provider for the provider unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.registry import ModelSpec, Registry, parse_registry
from workers.providers.mock.behaviour import MockState
from workers.providers.mock.server import create_app

BASE = "http://mock.invalid"

# One model per adapter, named after the adapter, plus a host with quirks.
RAW_REGISTRY: dict[str, Any] = {
    "providers": {
        "openai": {"adapter": "openai", "base_url": f"{BASE}/v1"},
        "quirky": {
            "adapter": "openai",
            "base_url": f"{BASE}/v1",
            "quirks": {"stream_usage": False, "max_tokens_field": "max_completion_tokens"},
        },
        "anthropic": {"adapter": "anthropic", "base_url": BASE},
        "gemini": {"adapter": "gemini", "base_url": BASE},
    },
    "models": {
        "openai": {"provider": "openai", "upstream": "gpt-5.2"},
        "quirky": {"provider": "quirky", "upstream": "deepseek-chat"},
        "anthropic": {
            "provider": "anthropic",
            "upstream": "claude-sonnet-4-5",
            "max_output_tokens": 8192,
        },
        "gemini": {"provider": "gemini", "upstream": "gemini-3-flash"},
    },
}


@pytest.fixture(scope="session")
def registry() -> Registry:
    return parse_registry(RAW_REGISTRY, env={})


@pytest.fixture(params=["openai", "anthropic", "gemini"])
def adapter_name(request: pytest.FixtureRequest) -> str:
    """Every test taking this fixture runs once per adapter: one suite for all of them."""
    return str(request.param)


@pytest.fixture
def model(registry: Registry, adapter_name: str) -> ModelSpec:
    return registry.get(adapter_name)


@pytest.fixture
def mock_app() -> Iterator[tuple[MockState, FlaskClient]]:
    """The mock provider in process, with no latency: for response-shape tests."""
    state = MockState()
    state.configure({"model": "*", "ttft_ms": 0, "token_ms": 0})
    yield state, create_app(state).test_client()
