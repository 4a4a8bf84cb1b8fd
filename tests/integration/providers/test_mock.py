"""The mock provider's control endpoint and its behaviour under load."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

CHAT = "/v1/chat/completions"


def chat(client: httpx.Client, model: str = "gpt-5-mini", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}
    return client.post(CHAT, json=body)


def stream_text(client: httpx.Client, model: str, content: str = "hello") -> str:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": content}]}
    text = []
    with client.stream("POST", CHAT, json=body) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text.append(choice["delta"].get("content") or "")
    return "".join(text)


def test_health_and_defaults(mock: httpx.Client) -> None:
    assert mock.get("/_mock/health").json()["status"] == "ok"
    defaults = mock.get("/_mock/config").json()["defaults"]
    assert {"gpt-5.2", "claude-sonnet-4-5", "gemini-3-pro", "deepseek-chat"} <= set(defaults)
    assert all(p["tokens"] > 0 and p["ttft_ms"] > 0 for p in defaults.values())


@pytest.mark.parametrize(
    "bad",
    [
        {"ttft_ms": 1},
        {"model": "x", "fault": {"kind": "explode"}},
        {"model": "x", "fault": {"kind": "status", "status": 200}},
        {"model": "x", "colour": "blue"},
        {"model": "x", "replies": "not a list"},
    ],
)
def test_config_rejects_nonsense(mock: httpx.Client, bad: dict[str, Any]) -> None:
    assert mock.post("/_mock/config", json=bad).status_code == 400


def test_text_is_deterministic_and_differs_per_model(fast_mock: httpx.Client) -> None:
    first = stream_text(fast_mock, "gpt-5-mini", "tell me")
    assert first == stream_text(fast_mock, "gpt-5-mini", "tell me")
    assert first != stream_text(fast_mock, "deepseek-chat", "tell me")
    assert first != stream_text(fast_mock, "gpt-5-mini", "tell me more")


def test_replies_are_consumed_in_order_then_fall_back(fast_mock: httpx.Client) -> None:
    fast_mock.post(
        "/_mock/config", json={"model": "gpt-5-mini", "replies": ["one", "two"], "reply": "rest"}
    )
    texts = [chat(fast_mock).json()["choices"][0]["message"]["content"] for _ in range(4)]
    assert texts == ["one", "two", "rest", "rest"]


def test_fault_times_and_clearing(fast_mock: httpx.Client) -> None:
    fault = {"kind": "status", "status": 503, "times": 2}
    fast_mock.post("/_mock/config", json={"model": "*", "fault": fault})
    assert [chat(fast_mock).status_code for _ in range(3)] == [503, 503, 200]
    fast_mock.post("/_mock/config", json={"model": "gpt-5-mini", "fault": {"kind": "status"}})
    assert chat(fast_mock).status_code == 500
    assert chat(fast_mock, "gpt-5.2").status_code == 200  # a model's own fault stays its own
    fast_mock.post("/_mock/config", json={"model": "gpt-5-mini", "fault": None})
    assert chat(fast_mock).status_code == 200


def test_stats_and_recorded_requests(fast_mock: httpx.Client) -> None:
    chat(fast_mock, temperature=0.25)
    stream_text(fast_mock, "gpt-5-mini")
    stats = fast_mock.get("/_mock/stats").json()
    assert stats["calls"] == {"gpt-5-mini": 2}
    assert stats["completed"] == {"gpt-5-mini": 2}
    assert stats["active_streams"] == 0 and stats["client_disconnects"] == {}
    recorded = fast_mock.get("/_mock/requests", params={"model": "gpt-5-mini"}).json()
    assert [r["body"].get("temperature") for r in recorded] == [0.25, None]
    assert all(r["path"] == CHAT for r in recorded)
    fast_mock.post("/_mock/reset")
    assert fast_mock.get("/_mock/stats").json()["calls"] == {}
    assert fast_mock.get("/_mock/requests").json() == []


def test_api_keys_are_not_recorded(fast_mock: httpx.Client) -> None:
    fast_mock.post(
        CHAT,
        json={"model": "gpt-5-mini", "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": "Bearer sk-very-secret-key-1234"},
    )
    [seen] = fast_mock.get("/_mock/requests", params={"limit": 1}).json()
    assert "secret" not in json.dumps(seen) and seen["headers"]["authorization"].endswith("1234")


def test_latency_profile_is_applied(mock: httpx.Client) -> None:
    mock.post(
        "/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 200, "token_ms": 10, "tokens": 11}
    )
    start = time.monotonic()
    stream_text(mock, "gpt-5-mini")
    assert 0.28 <= time.monotonic() - start < 1.5


def test_hundreds_of_concurrent_streams(mock_url: str, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 50, "token_ms": 20, "tokens": 10})
    limits = httpx.Limits(max_connections=200)
    with httpx.Client(base_url=mock_url, limits=limits, timeout=10) as client:
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=200) as pool:
            texts = list(pool.map(lambda i: stream_text(client, "gpt-5-mini", str(i)), range(200)))
        elapsed = time.monotonic() - start
    assert all(len(t.split()) == 10 for t in texts)
    # Serially this is 200 x 0.23 s = 46 s; concurrently it is one stream's time plus overhead.
    assert elapsed < 8, elapsed
    assert mock.get("/_mock/stats").json()["completed"] == {"gpt-5-mini": 200}
