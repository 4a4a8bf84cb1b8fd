"""The meter's arithmetic: when a call extends its hold, by how much, and where it stops.

The database write is replaced by a recorder here; ``tests/unit/shared/test_extension.py``
and ``tests/integration/test_holds.py`` run the real one."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared import extension
from shared.registry import get_registry
from shared.settings import PACKAGE_DIR
from workers import meter
from workers.providers.base import ChatCall

MODEL = get_registry(PACKAGE_DIR / "models.toml").get("gpt-5-mini")  # 2,000 per 1M out
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[Decimal]:
    """Extensions asked for; each is granted unless the list's owner says otherwise."""
    calls: list[Decimal] = []
    monkeypatch.setattr(meter, "extend", lambda _job, credits: calls.append(credits) or (
        extension.OK if len(calls) < 100 else extension.INSUFFICIENT))
    return calls


def test_the_allowance_doubles_at_three_quarters_up_to_the_model_limit(
    asked: list[Decimal],
) -> None:
    m = meter.Meter("j", MODEL, ChatCall(messages=HI), charge=True)
    assert m.allowed == 512
    assert m.add("a" * (512 * 3 - 1))  # just under three quarters of 512 tokens
    assert asked == []
    assert m.add("a")
    assert asked == [Decimal("1.024")] and m.allowed == 1024  # 512 tokens at 2,000/1M
    assert m.add("a" * (1024 * 3 - 512 * 3))
    assert m.allowed == 2048 and len(asked) == 2
    for _ in range(40):
        assert m.add("a" * 4096)
    # 512 doubled five times is 16,384: the model's limit; nothing past it.
    assert m.allowed == MODEL.max_output_tokens and len(asked) == 5
    assert m.held == MODEL.cost(m.prompt_tokens, 512) + sum(asked)


def test_a_refused_extension_lets_the_call_use_what_is_held_then_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(meter, "extend", lambda _job, _credits: extension.OVER_BUDGET)
    m = meter.Meter("j", MODEL, ChatCall(messages=HI), charge=True)
    assert m.add("a" * 512 * 3)  # refused, a quarter is left to stream
    assert m.refused == extension.OVER_BUDGET and not m.stopped
    assert not m.add("b" * 600)  # crosses 2,048 bytes by 88
    assert m.stopped and m.trim("b" * 600) == "b" * 512
    # Multibyte text is cut on a character boundary, within what is held.
    m = meter.Meter("j", MODEL, ChatCall(messages=HI), charge=True)
    m.add("a" * 512 * 3)
    assert not m.add("é" * 300)  # 600 bytes
    assert m.trim("é" * 300) == "é" * 256


def test_max_tokens_and_own_keys_are_never_metered(asked: list[Decimal]) -> None:
    capped = meter.Meter("j", MODEL, ChatCall(messages=HI, max_tokens=100), charge=True)
    own = meter.Meter("j", MODEL, ChatCall(messages=HI), charge=False)
    for m in (capped, own):
        assert m.add("a" * 100_000)
        m.top_up(Decimal(1000))
    assert asked == []


def test_a_cost_past_the_allowance_is_held_after_the_call(asked: list[Decimal]) -> None:
    m = meter.Meter("j", MODEL, ChatCall(messages=HI), charge=True)
    m.top_up(m.held)
    assert asked == []
    m.top_up(m.held + Decimal("0.25"))
    assert asked == [Decimal("0.25")]


def test_quoted_answers_longer_than_planned_are_held_before_the_call(
    asked: list[Decimal], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Planned at 512 tokens each: 4,000 bytes is 1,000 tokens, 488 more than planned.
    assert meter.quoted_excess([(MODEL, "a" * 4000), (MODEL, "b" * 400)], None) == 488
    assert meter.quoted_excess([(MODEL, "a" * 4000)], 2000) == 0  # max_tokens held it
    m = meter.Meter("j", MODEL, ChatCall(messages=HI), charge=True, prompt_excess=488)
    assert asked == [Decimal("0.122")]  # 488 tokens at 250 per 1M in
    assert m.held == MODEL.cost(m.prompt_tokens, 512) + Decimal("0.122")
    # Refused: the answer gets that much less room, and stops there.
    monkeypatch.setattr(meter, "extend", lambda _job, _credits: extension.INSUFFICIENT)
    m = meter.Meter("j", MODEL, ChatCall(messages=HI), charge=True, prompt_excess=40_000)
    assert m.refused == extension.INSUFFICIENT and m.allowed == 0  # 10 credits: 5,000 out
    assert not m.add("a")
