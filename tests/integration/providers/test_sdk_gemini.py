"""The official Google Gen AI SDK as a client of the mock."""

from __future__ import annotations

import json

import httpx
import pytest
from google import genai
from google.genai import errors, types

MODEL = "gemini-3-flash"
REPLY = "The quick brown fox jumps over the lazy dog."


@pytest.fixture
def sdk(mock_url: str, fast_mock: httpx.Client) -> genai.Client:
    return genai.Client(api_key="x", http_options=types.HttpOptions(base_url=mock_url))


def test_stream_text_and_usage(sdk: genai.Client, fast_mock: httpx.Client) -> None:
    fast_mock.post("/_mock/config", json={"model": MODEL, "reply": REPLY})
    chunks = list(sdk.models.generate_content_stream(model=MODEL, contents="What does the fox do?"))
    assert "".join(c.text or "" for c in chunks) == REPLY
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata and last.usage_metadata.candidates_token_count == 9


def test_non_stream_max_tokens_and_system(sdk: genai.Client, fast_mock: httpx.Client) -> None:
    fast_mock.post("/_mock/config", json={"model": MODEL, "reply": REPLY})
    config = types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=3)
    done = sdk.models.generate_content(model=MODEL, contents="fox?", config=config)
    assert done.text == "The quick brown"
    assert done.candidates and done.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    [seen] = fast_mock.get("/_mock/requests", params={"model": MODEL, "limit": 1}).json()
    assert seen["body"]["systemInstruction"]["parts"][0]["text"] == "Be brief."


def test_function_call(sdk: genai.Client) -> None:
    def get_weather(location: str) -> str:
        """Current weather for a city."""
        return "sunny"

    config = types.GenerateContentConfig(
        tools=[get_weather],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    done = sdk.models.generate_content(model=MODEL, contents="Weather in Paris?", config=config)
    [call] = done.function_calls or []
    assert call.name == "get_weather" and call.args == {"location": "Paris"}
    chunks = list(sdk.models.generate_content_stream(model=MODEL, contents="Paris?", config=config))
    assert [c.name for ch in chunks for c in ch.function_calls or []] == ["get_weather"]


def test_json_mode(sdk: genai.Client) -> None:
    config = types.GenerateContentConfig(response_mime_type="application/json")
    done = sdk.models.generate_content(model=MODEL, contents="json please", config=config)
    assert isinstance(json.loads(done.text or ""), dict)


def test_rate_limit_error(sdk: genai.Client, fast_mock: httpx.Client) -> None:
    fast_mock.post(
        "/_mock/config", json={"model": MODEL, "fault": {"kind": "status", "status": 429}}
    )
    with pytest.raises(errors.ClientError) as info:
        sdk.models.generate_content(model=MODEL, contents="hi")
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"


def test_server_error(sdk: genai.Client, fast_mock: httpx.Client) -> None:
    fast_mock.post(
        "/_mock/config", json={"model": MODEL, "fault": {"kind": "status", "status": 500}}
    )
    with pytest.raises(errors.ServerError) as info:
        list(sdk.models.generate_content_stream(model=MODEL, contents="hi"))
    assert info.value.code == 500
