"""The OpenAI translation without a server: request in, chunks and completions out, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask

from api.errors import ApiError
from api.openai_compat import (
    ChunkFrames,
    _openai_error_shape,
    _openai_param,
    completion_body,
    to_chat_request,
)
from shared import events
from shared.api_models import ChatCompletion, ChatCompletionChunk, OpenAIError
from shared.schemas import ChatCompletionRequest


def oreq(**body: Any) -> ChatCompletionRequest:
    base = {"model": "gpt-5.2", "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate_json(json.dumps({**base, **body}), strict=True)


def test_request_translation() -> None:
    req = to_chat_request(oreq(
        messages=[{"role": "developer", "content": "be brief"},
                  {"role": "user", "content": "weather?"},
                  {"role": "assistant", "content": None, "refusal": None, "audio": None,
                   "function_call": None, "annotations": [],
                   "tool_calls": [{"id": "c1", "type": "function",
                                   "function": {"name": "w", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "21C"}],
        max_tokens=10, max_completion_tokens=20, n=1, user="u1", seed=3,
        chorus={"fallback": ["deepseek-v3.2"], "keep_running": True, "session_id": "s"},
    ))
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "tool"]
    assert req.messages[2].tool_calls and req.messages[2].content is None
    assert req.max_tokens == 20  # the newer name wins, as in OpenAI's API
    assert req.routing is not None and req.routing.fallback == ["deepseek-v3.2"]
    assert req.keep_running and req.session_id == "s"
    assert req.model_ids() == ["gpt-5.2", "deepseek-v3.2"]


def test_translation_errors_name_the_openai_field() -> None:
    with pytest.raises(ApiError) as exc:
        to_chat_request(oreq(messages=[{"role": "user", "content": None}]))
    assert exc.value.status == 400 and exc.value.param == "messages.0"
    assert _openai_param(["routing", "fallback", "2"]) == "chorus.fallback.2"
    assert _openai_param(["session_id"]) == "chorus.session_id"
    assert _openai_param(["temperature"]) == "temperature"
    assert _openai_param([]) is None


@pytest.mark.parametrize("body", [{"n": 2}, {"logprobs": True}, {"frequency_penalty": 1},
                                  {"stop": ["a", "b", "c", "d", "e"]}, {"temperature": 2.5}])
def test_unsupported_options_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="validation error"):
        oreq(**body)


def _event(**fields: Any) -> tuple[int, str]:
    return 0, events.encode(fields)


def _chunks(frames: ChunkFrames, evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, ev in enumerate(evs, 1):
        for line in frames(i, events.encode(ev)):
            text = line.decode()
            assert text.startswith("data: ") and text.endswith("\n\n")
            out.append(json.loads(text[6:]))
    return out


FINAL = events.final_event("done", job_id="j1", status="succeeded", model="gpt-5-mini",
                           prompt_tokens=7, completion_tokens=3, finish_reason="stop",
                           full_content="Hi there", credits_charged=1.2,
                           resolved_model="gpt-5-mini")


def test_text_stream_becomes_chunks() -> None:
    frames = ChunkFrames("j1", 100, "auto", include_usage=True)
    got = _chunks(frames, [
        {"event": "route", "model": "gpt-5-mini", "status": "selected"},
        {"event": "chunk", "model": "gpt-5-mini", "delta": "Hi", "done": False},
        {"event": "chunk", "model": "gpt-5-mini", "delta": " there", "done": False},
        {"event": "chunk", "model": "gpt-5-mini", "delta": "", "done": True,
         "finish_reason": "stop", "prompt_tokens": 7, "completion_tokens": 3},
        FINAL,
    ])
    for c in got:
        ChatCompletionChunk.model_validate(c)
        assert c["id"] == "chatcmpl-j1" and c["created"] == 100 and "usage" in c
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert got[1]["choices"][0]["delta"] == {"content": " there"}
    assert got[2]["choices"][0]["finish_reason"] == "stop"
    assert got[2]["chorus"]["credits_charged"] == 1.2
    assert got[3]["choices"] == []
    assert got[3]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert {c["model"] for c in got} == {"gpt-5-mini"}


def test_tool_call_fragments_become_openai_deltas() -> None:
    frames = ChunkFrames("j2", 1, "gpt-5.2", include_usage=False)
    got = _chunks(frames, [
        {"event": "chunk", "model": "gpt-5.2", "delta": "", "done": False,
         "tool_calls": [{"index": 0, "id": "call_1", "name": "w", "arguments": ""}]},
        {"event": "chunk", "model": "gpt-5.2", "delta": "", "done": False,
         "tool_calls": [{"index": 0, "id": None, "name": None, "arguments": '{"a":'}]},
        events.final_event("done", job_id="j2", status="succeeded", finish_reason="tool_calls",
                           credits_charged=1.0),
    ])
    assert "usage" not in got[0]
    first, second = (c["choices"][0]["delta"]["tool_calls"][0] for c in got[:2])
    assert first == {"index": 0, "id": "call_1", "type": "function",
                     "function": {"name": "w", "arguments": ""}}
    assert second == {"index": 0, "function": {"arguments": '{"a":'}}
    assert got[2]["choices"][0]["finish_reason"] == "tool_calls"


def test_failed_job_ends_with_an_error_line() -> None:
    frames = ChunkFrames("j3", 1, "gpt-5.2", include_usage=True)
    failed = events.final_event("error", job_id="j3", status="failed", credits_charged=0,
                                error={"code": "upstream_error", "message": "boom",
                                       "http_status": 502})
    (line,) = frames(9, events.encode(failed))
    body = json.loads(line.decode()[6:])
    assert body == {"error": {"message": "boom", "type": "api_error", "param": None,
                              "code": "upstream_error"}}
    assert list(frames(None, events.encode({"event": "trace", "attempts": []}))) == []


def test_a_broken_off_stream_ends_with_an_error_line_not_a_silent_cut() -> None:
    frames = ChunkFrames("j4", 1, "gpt-5.2", include_usage=False)
    (line,) = frames(None, events.encode(events.reconnect_event("j4", 3)))
    body = json.loads(line.decode()[6:])
    OpenAIError.model_validate(body)
    assert body["error"]["code"] == "unavailable"
    assert "/api/v1/jobs/j4/events" in body["error"]["message"]


def test_completion_body() -> None:
    body = completion_body("j1", 5, "auto", FINAL)
    ChatCompletion.model_validate(body)
    assert body["model"] == "gpt-5-mini"
    assert body["choices"][0]["message"]["content"] == "Hi there"
    assert body["usage"]["total_tokens"] == 10
    calls = [{"id": "c", "type": "function", "function": {"name": "w", "arguments": "{}"}}]
    tool = completion_body("j1", 5, "gpt-5.2", {**FINAL, "full_content": "",
                                                 "tool_calls": calls,
                                                 "finish_reason": "tool_calls"})
    assert tool["choices"][0]["message"]["content"] is None
    assert tool["choices"][0]["message"]["tool_calls"] == calls
    assert tool["choices"][0]["finish_reason"] == "tool_calls"
    # A cancelled job still answers with what it produced; unknown reasons read as stop.
    cancelled = completion_body("j1", 5, "x", {**FINAL, "status": "cancelled",
                                               "finish_reason": None})
    assert cancelled["choices"][0]["finish_reason"] == "stop"
    assert cancelled["chorus"]["status"] == "cancelled"


def test_completion_of_a_failed_job_raises_its_status() -> None:
    with pytest.raises(ApiError) as exc:
        completion_body("j", 1, "m", {"status": "failed", "error": {
            "code": "upstream_error", "message": "all down", "http_status": 502}})
    assert (exc.value.status, exc.value.code) == (502, "upstream_error")


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"),
    (402, "insufficient_quota"), (404, "not_found_error"), (429, "rate_limit_error"),
    (502, "api_error"), (503, "api_error"),
])
def test_errors_take_openai_shape(status: int, kind: str) -> None:
    app = Flask("t")
    with app.test_request_context():
        resp = ApiError(status, "some_code", "went wrong", "model", {"Retry-After": "3"},
                        credits=1.5).response()
        out = _openai_error_shape(resp)
        body = out.get_json()
    OpenAIError.model_validate(body)
    assert body == {"error": {"message": "went wrong", "type": kind, "param": "model",
                              "code": "some_code", "credits": 1.5}}
    assert out.status_code == status and out.headers["Retry-After"] == "3"


def test_success_bodies_are_left_alone() -> None:
    app = Flask("t")
    with app.test_request_context():
        ok = app.response_class(json.dumps({"error": {"code": "x"}}), status=200,
                                mimetype="application/json")
        assert _openai_error_shape(ok).get_json() == {"error": {"code": "x"}}


def test_the_answer_said_again_after_lost_events_is_not_sent_twice() -> None:
    frames = ChunkFrames("j5", 1, "gpt-5.2", include_usage=False)

    def chunk(delta: str, **more: Any) -> dict[str, Any]:
        return {"event": "chunk", "model": "gpt-5.2", "delta": delta, "done": False, **more}

    frag = {"index": 0, "id": "call_1", "name": "w", "arguments": "{"}
    got = _chunks(frames, [
        chunk("Hel"), chunk("lo", tool_calls=[frag]),
        events.lost_event(1000001),
        # The worker says the answer so far again, as one chunk, then goes on.
        chunk("Hello wor", tool_calls=[frag]), chunk("ld"),
        events.final_event("done", job_id="j5", status="succeeded", credits_charged=1.0),
    ])
    deltas = [c["choices"][0]["delta"] for c in got if c["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == "Hello world"
    assert sum(len(d.get("tool_calls", [])) for d in deltas) == 1
