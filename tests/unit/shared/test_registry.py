"""The registry file: env interpolation, prices, validation of references."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.registry import RegistryError, get_registry, parse_registry
from shared.settings import PACKAGE_DIR

RAW = {
    "providers": {"p": {"adapter": "openai", "base_url": "${HOST:-http://x}/v1/",
                        "key_env": "P_KEY"}},
    "models": {"m": {"provider": "p", "upstream": "up-m", "input_per_mtok": 1000,
                     "output_per_mtok": 3000, "capabilities": ["tools"]}},
}


def test_env_interpolation_and_defaults() -> None:
    reg = parse_registry(RAW, env={"HOST": "http://h:1"})
    assert reg.get("m").provider.base_url == "http://h:1/v1"
    assert parse_registry(RAW, env={}).get("m").provider.base_url == "http://x/v1"


def test_cost_is_exact_decimal() -> None:
    m = parse_registry(RAW, env={}).get("m")
    assert m.cost(1000, 500) == Decimal("2.500000")
    assert m.supports("tools") and not m.supports("json_mode")


def test_unknown_model_and_dangling_provider_are_errors() -> None:
    reg = parse_registry(RAW, env={})
    with pytest.raises(RegistryError):
        reg.get("nope")
    bad = {"providers": {}, "models": {"m": {"provider": "ghost"}}}
    with pytest.raises(RegistryError, match="unknown provider"):
        parse_registry(bad, env={})


def test_default_registry_offers_realistic_ids_all_on_known_adapters() -> None:
    reg = get_registry(PACKAGE_DIR / "models.toml")
    for model_id in ("gpt-5.2", "claude-sonnet-4.5", "gemini-3-flash", "deepseek-v3.2",
                     "llama-3.3-70b"):
        assert model_id in reg
    from workers.providers.registry import ADAPTERS

    assert {m.provider.adapter for m in reg.models.values()} <= set(ADAPTERS)


def test_typical_output_defaults_to_512_and_must_be_a_positive_integer() -> None:
    assert parse_registry(RAW, env={}).get("m").typical_output_tokens == 512
    raw = {**RAW, "models": {"m": {**RAW["models"]["m"], "typical_output_tokens": 900}}}
    assert parse_registry(raw, env={}).get("m").typical_output_tokens == 900
    for bad in (0, -5, "600", 1.5, True):
        raw = {**RAW, "models": {"m": {**RAW["models"]["m"], "typical_output_tokens": bad}}}
        with pytest.raises(RegistryError, match="typical_output_tokens"):
            parse_registry(raw, env={})
