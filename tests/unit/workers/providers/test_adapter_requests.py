"""Request translation, run over every adapter: what each one puts on the wire."""

from __future__ import annotations

from typing import Any

import pytest

from shared.registry import ModelSpec, Registry
from workers.providers.base import ChatCall, HttpRequest
from workers.providers.registry import get_adapter

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"location": {"type": "string"}},
    "required": ["location"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather.", "parameters": WEATHER_PARAMS},
}


def build(model: ModelSpec, call: ChatCall, stream: bool = True) -> HttpRequest:
    return get_adapter(model.provider.adapter).build_request(
        model, call, stream=stream, api_key="sk-test"
    )


def roles(name: str, body: dict[str, Any]) -> list[str]:
    turns = body["contents"] if name == "gemini" else body["messages"]
    return [t["role"] for t in turns]


def system(name: str, body: dict[str, Any]) -> Any:
    if name == "openai":
        return [m["content"] for m in body["messages"] if m["role"] == "system"]
    if name == "anthropic":
        return body.get("system")
    return body["systemInstruction"]["parts"][0]["text"]


def texts(name: str, turn: dict[str, Any]) -> list[str]:
    if name == "openai":
        return [turn["content"]]
    blocks = turn["parts"] if name == "gemini" else turn["content"]
    return [b["text"] for b in blocks if "text" in b]


def test_system_prompts_are_lifted(adapter_name: str, model: ModelSpec) -> None:
    call = ChatCall(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Use French."},
        ]
    )
    body = build(model, call).json
    expected: dict[str, Any] = {
        "openai": (["Be brief.", "Use French."], ["system", "user", "system"]),
        "anthropic": ("Be brief.\n\nUse French.", ["user"]),
        "gemini": ("Be brief.\n\nUse French.", ["user"]),
    }
    assert (system(adapter_name, body), roles(adapter_name, body)) == expected[adapter_name]


def test_roles_alternate(adapter_name: str, model: ModelSpec) -> None:
    said = ["a", "b", "c", "d", "e"]
    who = ["user", "user", "assistant", "assistant", "user"]
    body = build(
        model,
        ChatCall(messages=[{"role": r, "content": t} for r, t in zip(who, said, strict=True)]),
    ).json
    if adapter_name == "openai":
        assert roles(adapter_name, body) == who
        return
    assistant = "model" if adapter_name == "gemini" else "assistant"
    assert roles(adapter_name, body) == ["user", assistant, "user"]
    turns = body["contents"] if adapter_name == "gemini" else body["messages"]
    assert [texts(adapter_name, t) for t in turns] == [["a", "b"], ["c", "d"], ["e"]]


def test_conversation_opening_with_assistant_gets_a_user_turn(
    adapter_name: str, model: ModelSpec
) -> None:
    call = ChatCall(messages=[{"role": "assistant", "content": "Earlier answer  "}])
    body = build(model, call).json
    got = roles(adapter_name, body)
    assert got[0] == ("assistant" if adapter_name == "openai" else "user")
    if adapter_name == "anthropic":
        # A final assistant turn is a prefill; the API refuses trailing whitespace there.
        assert body["messages"][-1]["content"][-1]["text"] == "Earlier answer"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (
            "required",
            {
                "openai": "required",
                "anthropic": {"type": "any"},
                "gemini": {"functionCallingConfig": {"mode": "ANY"}},
            },
        ),
        (
            "none",
            {
                "openai": "none",
                "anthropic": {"type": "none"},
                "gemini": {"functionCallingConfig": {"mode": "NONE"}},
            },
        ),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {
                "openai": {"type": "function", "function": {"name": "get_weather"}},
                "anthropic": {"type": "tool", "name": "get_weather"},
                "gemini": {
                    "functionCallingConfig": {
                        "mode": "ANY",
                        "allowedFunctionNames": ["get_weather"],
                    }
                },
            },
        ),
    ],
)
def test_tools_and_tool_choice(
    adapter_name: str, model: ModelSpec, choice: Any, expected: dict[str, Any]
) -> None:
    body = build(
        model,
        ChatCall(messages=[{"role": "user", "content": "?"}], tools=[WEATHER], tool_choice=choice),
    ).json
    if adapter_name == "openai":
        assert body["tools"] == [WEATHER] and body["tool_choice"] == expected["openai"]
    elif adapter_name == "anthropic":
        assert body["tools"] == [
            {"name": "get_weather", "description": "Weather.", "input_schema": WEATHER_PARAMS}
        ]
        assert body["tool_choice"] == expected["anthropic"]
    else:
        assert body["tools"] == [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Weather.",
                        "parametersJsonSchema": WEATHER_PARAMS,
                    }
                ]
            }
        ]
        assert body["toolConfig"] == expected["gemini"]


def test_tool_call_and_result_round_trip(adapter_name: str, model: ModelSpec) -> None:
    call = ChatCall(
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        ],
        tools=[WEATHER],
    )
    body = build(model, call).json
    if adapter_name == "openai":
        assert body["messages"] == call.messages
    elif adapter_name == "anthropic":
        assert roles(adapter_name, body) == ["user", "assistant", "user"]
        assert body["messages"][1]["content"] == [
            {
                "type": "tool_use",
                "id": "call_1",
                "name": "get_weather",
                "input": {"location": "Paris"},
            }
        ]
        assert body["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp": 21}'}
        ]
    else:
        assert roles(adapter_name, body) == ["user", "model", "user"]
        [fc] = body["contents"][1]["parts"]
        assert fc["functionCall"] == {"name": "get_weather", "args": {"location": "Paris"}}
        assert body["contents"][2]["parts"] == [
            {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}
        ]


def test_json_mode(adapter_name: str, model: ModelSpec) -> None:
    body = build(
        model,
        ChatCall(
            messages=[{"role": "user", "content": "?"}], response_format={"type": "json_object"}
        ),
    ).json
    if adapter_name == "openai":
        assert body["response_format"] == {"type": "json_object"}
    elif adapter_name == "anthropic":
        assert "JSON" in body["system"]  # no JSON mode in the Messages API: instructed
    else:
        assert body["generationConfig"]["responseMimeType"] == "application/json"


def test_sampling_options(adapter_name: str, model: ModelSpec) -> None:
    call = ChatCall(
        messages=[{"role": "user", "content": "?"}],
        temperature=0.3,
        top_p=0.9,
        max_tokens=50,
        stop=["END"],
    )
    body = build(model, call).json
    expected = {
        "openai": {"temperature": 0.3, "top_p": 0.9, "max_tokens": 50, "stop": ["END"]},
        # Recent Claude models refuse temperature and top_p together.
        "anthropic": {"temperature": 0.3, "max_tokens": 50, "stop_sequences": ["END"]},
        "gemini": {
            "temperature": 0.3,
            "topP": 0.9,
            "maxOutputTokens": 50,
            "stopSequences": ["END"],
        },
    }[adapter_name]
    where = body["generationConfig"] if adapter_name == "gemini" else body
    assert {k: where.get(k) for k in expected} == expected
    if adapter_name == "anthropic":
        assert "top_p" not in body


def test_url_and_headers(adapter_name: str, model: ModelSpec) -> None:
    streamed = build(model, ChatCall(messages=[{"role": "user", "content": "?"}]))
    whole = build(model, ChatCall(messages=[{"role": "user", "content": "?"}]), stream=False)
    base = "http://mock.invalid"
    urls = {
        "openai": (f"{base}/v1/chat/completions", f"{base}/v1/chat/completions"),
        "anthropic": (f"{base}/v1/messages", f"{base}/v1/messages"),
        "gemini": (
            f"{base}/v1beta/models/gemini-3-flash:streamGenerateContent?alt=sse",
            f"{base}/v1beta/models/gemini-3-flash:generateContent",
        ),
    }
    assert (streamed.url, whole.url) == urls[adapter_name]
    auth = {
        "openai": ("authorization", "Bearer sk-test"),
        "anthropic": ("x-api-key", "sk-test"),
        "gemini": ("x-goog-api-key", "sk-test"),
    }[adapter_name]
    assert streamed.headers[auth[0]] == auth[1]
    if adapter_name == "anthropic":
        assert streamed.headers["anthropic-version"] == "2023-06-01"
        assert streamed.json["stream"] is True and "stream" not in whole.json
    if adapter_name == "openai":
        assert streamed.json["stream_options"] == {"include_usage": True}


def test_images_become_native_parts(adapter_name: str, model: ModelSpec) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
    ]
    body = build(model, ChatCall(messages=[{"role": "user", "content": content}])).json
    if adapter_name == "openai":
        assert body["messages"][0]["content"] == content
    elif adapter_name == "anthropic":
        assert body["messages"][0]["content"][1] == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
        }
    else:
        assert body["contents"][0]["parts"][1] == {
            "inlineData": {"mimeType": "image/png", "data": "iVBO"}
        }


def test_openai_compatible_quirks(registry: Registry) -> None:
    body = build(
        registry.get("quirky"), ChatCall(messages=[{"role": "user", "content": "?"}], max_tokens=9)
    ).json
    assert "stream_options" not in body
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body


def test_anthropic_always_sends_max_tokens(registry: Registry) -> None:
    body = build(registry.get("anthropic"), ChatCall(messages=[{"role": "user", "content": "?"}]))
    assert body.json["max_tokens"] == 8192


def test_anthropic_temperature_is_clamped(registry: Registry) -> None:
    call = ChatCall(messages=[{"role": "user", "content": "?"}], temperature=1.6)
    assert build(registry.get("anthropic"), call).json["temperature"] == 1.0
