"""Reservations cover every call a job may make: its prompt and its expected answer."""

from __future__ import annotations

from decimal import Decimal

from shared import pricing
from shared.registry import get_registry
from shared.settings import PACKAGE_DIR

REG = get_registry(PACKAGE_DIR / "models.toml")
MSG = [{"role": "user", "content": "x" * 400}]


def test_chat_reserves_base_plus_max_tokens() -> None:
    calls = pricing.plan_calls("chat", {"model": "gpt-5.2", "messages": MSG,
                                        "max_tokens": 100}, REG)
    assert len(calls) == 1 and calls[0].output_tokens == 100
    m = REG.get("gpt-5.2")
    expected = Decimal(1) + m.cost(calls[0].prompt_tokens, 100)
    assert pricing.reservation("chat", calls) == expected
    assert calls[0].prompt_tokens >= 100  # 400 chars is about 100 tokens


def test_fallbacks_and_auto_are_covered() -> None:
    body = {"model": "auto", "messages": MSG, "routing": {"fallback": ["gpt-5-mini"]}}
    calls = pricing.plan_calls("chat", body, REG)
    assert calls[0].model == pricing.priciest(REG)
    assert calls[1].model.id == "gpt-5-mini"
    # The fallback may be handed the partial answer of the call it replaces.
    assert calls[1].prompt_tokens > calls[0].prompt_tokens


def test_output_cap_never_exceeds_model_limit() -> None:
    m = REG.get("gpt-5-mini")
    assert pricing.output_cap(m, None) == m.max_output_tokens
    assert pricing.output_cap(m, 10**9) == m.max_output_tokens


def test_compare_reserves_every_model() -> None:
    calls = pricing.plan_calls("compare", {"models": ["gpt-5.2", "gpt-5-mini", "gemini-3-flash"],
                                           "messages": MSG}, REG)
    assert [c.model.id for c in calls] == ["gpt-5.2", "gpt-5-mini", "gemini-3-flash"]
    assert pricing.reservation("compare", calls) > Decimal(3)


def test_without_max_tokens_a_call_is_held_for_a_typical_answer() -> None:
    """A "hi" to gpt-5.2 holds a few credits (its whole output limit was 164.85)."""
    m = REG.get("gpt-5.2")
    body = {"model": "gpt-5.2", "messages": [{"role": "user", "content": "hi"}]}
    calls = pricing.plan_calls("chat", body, REG)
    assert calls[0].output_tokens == m.typical_output_tokens == 512
    hold = pricing.reservation("chat", calls)
    assert hold == Decimal(1) + m.cost(calls[0].prompt_tokens, 512)
    assert Decimal(5) < hold < Decimal(7)


def test_expected_output_is_max_tokens_or_the_typical_answer_within_the_cap() -> None:
    m = REG.get("gpt-5-mini")
    assert pricing.expected_output(m, None) == m.typical_output_tokens
    assert pricing.expected_output(m, 20) == 20
    assert pricing.expected_output(m, 10**9) == m.max_output_tokens
