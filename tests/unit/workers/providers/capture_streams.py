"""Re-record the wire streams under ``streams/`` from the mock provider, in process.

Each adapter builds its own request (so the fixtures are what the mock answers to exactly
what Chorus sends) and the raw SSE body is saved as ``streams/<adapter>_<scenario>.sse``.
Run from the repository root: ``.venv/bin/python tests/unit/workers/providers/capture_streams.py``.
The ``*_multi_tool.sse`` files are written by hand in each provider's documented shape
and are left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.registry import ModelSpec, parse_registry
from workers.providers.base import ChatCall
from workers.providers.mock.behaviour import MockState
from workers.providers.mock.server import create_app
from workers.providers.registry import get_adapter

HERE = Path(__file__).resolve().parent
STREAMS = HERE / "streams"
REPLY = "The quick brown fox jumps over the lazy dog."
PROMPT = [{"role": "user", "content": "What does the fox do?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["location", "unit"],
        },
    },
}
BASE = "http://mock.invalid"
REGISTRY = parse_registry(
    {
        "providers": {
            "openai": {"adapter": "openai", "base_url": f"{BASE}/v1"},
            "anthropic": {"adapter": "anthropic", "base_url": BASE},
            "gemini": {"adapter": "gemini", "base_url": BASE},
        },
        "models": {
            "openai": {"provider": "openai", "upstream": "gpt-5.2"},
            "anthropic": {"provider": "anthropic", "upstream": "claude-sonnet-4-5"},
            "gemini": {"provider": "gemini", "upstream": "gemini-3-flash"},
        },
    },
    env={},
)

# scenario -> (mock config beyond the model name, the call)
SCENARIOS: dict[str, tuple[dict[str, Any], ChatCall]] = {
    "text": ({"reply": REPLY}, ChatCall(messages=PROMPT)),
    "length": ({"reply": REPLY}, ChatCall(messages=PROMPT, max_tokens=3)),
    "stop": ({"reply": REPLY}, ChatCall(messages=PROMPT, stop=["fox"])),
    "tool": ({}, ChatCall(messages=PROMPT, tools=[WEATHER])),
    "overloaded": (
        {"reply": REPLY, "fault": {"kind": "status", "status": 529, "after_tokens": 2}},
        ChatCall(messages=PROMPT),
    ),
    "malformed": (
        {"reply": REPLY, "fault": {"kind": "malformed", "after_tokens": 2}},
        ChatCall(messages=PROMPT),
    ),
    "disconnect": (
        {"reply": REPLY, "fault": {"kind": "disconnect", "after_tokens": 2}},
        ChatCall(messages=PROMPT),
    ),
}


def capture(model: ModelSpec, config: dict[str, Any], call: ChatCall) -> bytes:
    state = MockState()
    state.configure({"model": "*", "ttft_ms": 0, "token_ms": 0})
    state.configure({"model": model.upstream, **config})
    client = create_app(state).test_client()
    req = get_adapter(model.provider.adapter).build_request(model, call, stream=True, api_key="k")
    resp = client.post(
        req.url.removeprefix(BASE), json=req.json, headers=req.headers, buffered=False
    )
    body = b""
    try:
        for chunk in resp.response:
            body += chunk
    except ConnectionAbortedError:
        pass  # the disconnect fault: keep what came before the drop
    return body


def main() -> None:
    STREAMS.mkdir(exist_ok=True)
    for name in ("openai", "anthropic", "gemini"):
        model = REGISTRY.get(name)
        for scenario, (config, call) in SCENARIOS.items():
            path = STREAMS / f"{name}_{scenario}.sse"
            path.write_bytes(capture(model, config, call))
            print(f"wrote {path.relative_to(HERE)}")


if __name__ == "__main__":
    main()
