"""Request validation is strict: wrong types, unknown fields and bad counts fail."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from shared.schemas import (
    BlendRequest,
    ChatRequest,
    CompareRequest,
    JudgeRequest,
    repeated_fallback,
)

MSG = [{"role": "user", "content": "hi"}]


def parse(model: Any, body: dict[str, Any]) -> Any:
    return model.model_validate_json(json.dumps(body), strict=True)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": MSG, "stream": 1},
        {"model": "m", "messages": MSG, "top_p": 0},
        {"model": "m", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]},
        {"model": "m", "messages": [{"role": "assistant"}]},
        {"model": "", "messages": MSG},
        {"model": "m", "messages": MSG, "routing": {"fallback": ["a"], "extra": 1}},
    ],
)
def test_chat_rejects(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse(ChatRequest, body)


def test_chat_accepts_tool_call_history() -> None:
    req = parse(ChatRequest, {"model": "auto", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                               "function": {"name": "w",
                                                                            "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ], "routing": {"fallback": ["b"]}})
    assert req.model_ids() == ["b"]


@pytest.mark.parametrize("models", [["a"], ["a"] * 2, [f"m{i}" for i in range(10)]])
def test_compare_counts_and_duplicates(models: list[str]) -> None:
    with pytest.raises(ValidationError):
        parse(CompareRequest, {"models": models, "messages": MSG})


def test_blend_strategy_specific_fields() -> None:
    ok = parse(BlendRequest, {"models": ["a", "b"], "messages": MSG, "strategy": "moa",
                              "layers": 3})
    assert ok.layers == 3
    for body in (
        {"models": ["a", "b"], "messages": MSG, "layers": 2},
        {"models": ["a", "b"], "messages": MSG, "strategy": "self_moa"},
        {"models": ["a"], "messages": MSG, "strategy": "consensus"},
        {"models": ["a"], "messages": MSG, "strategy": "self_moa", "samples": 9},
        {"models": ["a", "b"], "messages": MSG, "strategy": "moa", "layers": 4},
    ):
        with pytest.raises(ValidationError):
            parse(BlendRequest, body)


def test_judge_counts() -> None:
    ok = parse(JudgeRequest, {"contestants": ["a", "b"], "judge": "j", "messages": MSG})
    assert ok.model_ids() == ["a", "b", "j"]
    with pytest.raises(ValidationError):
        parse(JudgeRequest, {"contestants": ["a"] * 5, "judge": "j", "messages": MSG})


@pytest.mark.parametrize(("model", "fallback", "at"), [
    ("a", [], None), ("a", ["b", "c"], None), ("a", ["a"], 0), ("a", ["b", "a"], 1),
    ("a", ["b", "b"], 1), ("a", ["b", "c", "d", "c"], 3), ("auto", ["b", "auto"], 1),
])
def test_repeated_fallback_finds_the_first_repeat(
    model: str, fallback: list[str], at: int | None
) -> None:
    assert repeated_fallback(model, fallback) == at


@pytest.mark.parametrize(("fallback", "loc"), [
    (["m"], ("routing", "fallback", 0)),
    (["x", "y", "x"], ("routing", "fallback", 2)),
])
def test_a_chain_repeating_a_model_names_the_repeat(
    fallback: list[str], loc: tuple[Any, ...]
) -> None:
    with pytest.raises(ValidationError) as err:
        parse(ChatRequest, {"model": "m", "messages": MSG, "routing": {"fallback": fallback}})
    first = err.value.errors()[0]
    assert first["loc"] == loc and first["type"] == "duplicate_model"


def test_a_chain_of_distinct_models_is_valid() -> None:
    req = parse(ChatRequest, {"model": "m", "messages": MSG, "routing": {"fallback": ["x"]}})
    assert req.model_ids() == ["m", "x"]


@pytest.mark.parametrize("session_id", ["a\x00", "a\nb", "a\rb", "\x1b[31m", "a\x7f", "a\x85",
                                        "a\u2028b"])
def test_a_session_id_holds_no_control_character(session_id: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse(ChatRequest, {"model": "m", "messages": MSG, "session_id": session_id})
    assert err.value.errors()[0]["loc"] == ("session_id",)


def test_a_session_id_may_hold_any_printable_text() -> None:
    sid = "user 42 — é€😀 \"quoted\" \\ slash"
    assert parse(ChatRequest, {"model": "m", "messages": MSG, "session_id": sid}).session_id == sid
