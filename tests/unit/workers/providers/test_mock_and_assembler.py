"""The mock's answer planning and the client's stream assembler, without any network."""

from __future__ import annotations

import json

import pytest

from workers.providers.base import Delta, StreamAssembler, ToolCallDelta, Usage, merge_usage
from workers.providers.mock.behaviour import ConfigError, MockState, Profile
from workers.providers.mock.plan import MockRequest, ToolSpec, build_plan, split_tokens

PROFILE = Profile(ttft_ms=0, token_ms=0, tokens=12)


@pytest.mark.parametrize("text", ["", "one", "two words", "  lead and trail  ", "a\n\nb c"])
def test_split_tokens_joins_back(text: str) -> None:
    assert "".join(split_tokens(text)) == text


def test_plan_is_deterministic_per_model_and_prompt() -> None:
    def text(model: str, prompt: str) -> str:
        return build_plan(MockRequest(model, True, prompt), PROFILE, None).text

    assert text("a", "hi") == text("a", "hi")
    assert text("a", "hi") != text("b", "hi")
    assert text("a", "hi") != text("a", "ho")
    assert len(split_tokens(text("a", "hi"))) == 12


def test_plan_limits() -> None:
    req = MockRequest("m", True, "p" * 40, max_tokens=2)
    plan = build_plan(req, PROFILE, "one two three")
    assert (plan.tokens, plan.finish, plan.prompt_tokens) == (["one", " two"], "length", 10)
    req = MockRequest("m", True, "p", stop=["thr"])
    plan = build_plan(req, PROFILE, "one two three")
    assert (plan.text, plan.finish, plan.stop_sequence) == ("one two ", "stop_sequence", "thr")


def test_plan_tool_call_and_json() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "INTEGER"}}, "required": ["n"]}
    plan = build_plan(MockRequest("m", True, "p", tools=[ToolSpec("f", schema)]), PROFILE, None)
    assert plan.tool_call is not None and plan.finish == "tool"
    assert isinstance(plan.tool_call.args["n"], int)
    assert "".join(plan.tool_call.fragments) == plan.tool_call.arguments
    none = MockRequest("m", True, "p", tools=[ToolSpec("f", schema)], tool_choice="none")
    assert build_plan(none, PROFILE, None).tool_call is None
    answer = json.loads(build_plan(MockRequest("m", True, "p", json_mode=True), PROFILE, None).text)
    assert set(answer) == {"answer"}


def test_state_resolves_overrides_and_counts_fault_uses() -> None:
    state = MockState(speed=2)
    state.configure({"model": "*", "token_ms": 10, "fault": {"kind": "hang", "times": 1}})
    state.configure({"model": "gpt-5.2", "tokens": 3, "replies": ["a"]})
    first = state.begin_call("gpt-5.2", "/p", {}, {})
    second = state.begin_call("gpt-5.2", "/p", {}, {})
    assert (first.profile.tokens, first.profile.token_ms, first.reply) == (3, 5.0, "a")
    assert first.fault is not None and second.fault is None and second.reply is None
    with pytest.raises(ConfigError):
        state.configure({"model": "x", "fault": {"kind": "status", "times": 0}})


def test_assembler_numbers_calls_and_merges_usage() -> None:
    asm = StreamAssembler()
    out = [
        asm.feed(Delta(usage=Usage(10, 0))),
        asm.feed(Delta(text="hi")),
        asm.feed(Delta(tool_calls=[ToolCallDelta(index=3, id="x", name="f")])),
        asm.feed(Delta(tool_calls=[ToolCallDelta(index=3, arguments='{"a":')])),
        asm.feed(
            Delta(tool_calls=[ToolCallDelta(index=0, name="g", arguments="{}", complete=True)])
        ),
        asm.feed(Delta(tool_calls=[ToolCallDelta(index=3, arguments="1}")])),
        asm.feed(Delta(finish_reason="stop", usage=Usage(0, 7))),
    ]
    assert out[0] is None
    assert [tc.index for d in out if d for tc in d.tool_calls] == [0, 0, 1, 0]
    assert out[-1] is not None and out[-1].finish_reason == "tool_calls"
    assert [c["function"]["arguments"] for c in asm.calls] == ['{"a":1}', "{}"]
    assert [c["id"] for c in asm.calls] == ["x", "call_1"]
    assert asm.final_usage([]) == Usage(10, 7)


def test_estimated_usage_when_none_reported() -> None:
    asm = StreamAssembler()
    asm.feed(Delta(text="abcdefgh", finish_reason="stop"))
    usage = asm.final_usage([{"role": "user", "content": "1234"}])
    assert usage == Usage(1, 2, estimated=True)
    assert merge_usage(None, usage) is usage
