"""GET /api/v1/usage: per-call rows, per-model aggregates, keyset pages, validated queries."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.stack import Stack

MSG = [{"role": "user", "content": "Tell me a short fact."}]


def chat(api: httpx.Client, model: str) -> dict[str, Any]:
    r = api.post("/api/v1/chat", json={"model": model, "messages": MSG, "max_tokens": 64})
    assert r.status_code in (200, 502), r.text
    return dict(r.json())


@pytest.fixture
def history(stack: Stack, mock: httpx.Client) -> Iterator[tuple[httpx.Client, list[str]]]:
    """A fresh account with 3 + 1 good calls on two models and one failed call."""
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 5, "token_ms": 2, "tokens": 12})
    key = stack.create_key(credits=500)
    with httpx.Client(base_url=stack.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as api:
        jobs = [chat(api, "gpt-5-mini")["job_id"] for _ in range(3)]
        jobs.append(chat(api, "deepseek-v3.2")["job_id"])
        mock.post("/_mock/config", json={"model": "gpt-5.2", "fault": {"kind": "status",
                                                                       "status": 500}})
        failed = chat(api, "gpt-5.2")
        assert failed["error"]["code"] == "upstream_error"
        jobs.append(failed["job_id"])
        yield api, jobs


def test_rows_and_aggregates(history: tuple[httpx.Client, list[str]]) -> None:
    api, jobs = history
    body = api.get("/api/v1/usage").json()
    rows = body["data"]
    assert [r["job_id"] for r in rows] == jobs[::-1]  # newest first, one row per call
    assert body["next_cursor"] is None
    for r in rows:
        assert set(r) >= {"id", "job_id", "model", "provider", "status", "prompt_tokens",
                          "completion_tokens", "latency_ms", "ttft_ms", "cost", "created_at"}
    assert rows[0]["status"] == "error" and rows[0]["cost"] == 0 and rows[0]["error"]
    models = {m["model"]: m for m in body["models"]}
    assert set(models) == {"gpt-5-mini", "deepseek-v3.2", "gpt-5.2"}
    for name, agg in models.items():
        mine = [r for r in rows if r["model"] == name]
        assert agg["requests"] == len(mine)
        assert agg["prompt_tokens"] == sum(r["prompt_tokens"] for r in mine)
        assert agg["completion_tokens"] == sum(r["completion_tokens"] for r in mine)
        assert agg["cost"] == pytest.approx(sum(r["cost"] for r in mine), abs=1e-6)
        median = statistics.median(r["latency_ms"] for r in mine)
        assert agg["p50_latency_ms"] == pytest.approx(median, abs=1e-3)
    assert models["gpt-5-mini"]["requests"] == 3
    assert models["gpt-5-mini"]["completion_tokens"] == 36
    assert models["gpt-5-mini"]["error_rate"] == 0
    assert models["gpt-5.2"]["error_rate"] == 1.0


def test_pages_cover_everything_once(history: tuple[httpx.Client, list[str]]) -> None:
    api, jobs = history
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/usage", params=params).json()
        seen += [r["job_id"] for r in page["data"]]
        pages += 1
        # Aggregates describe the whole history on every page, not just the page.
        assert sum(m["requests"] for m in page["models"]) == 5
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == jobs[::-1]


def test_filters(history: tuple[httpx.Client, list[str]]) -> None:
    api, jobs = history
    mini = api.get("/api/v1/usage", params={"model": "gpt-5-mini"}).json()
    assert [r["job_id"] for r in mini["data"]] == jobs[2::-1]
    assert [m["model"] for m in mini["models"]] == ["gpt-5-mini"]
    newest = api.get("/api/v1/usage").json()["data"][0]["created_at"]
    late = api.get("/api/v1/usage", params={"since": newest}).json()
    assert [r["job_id"] for r in late["data"]] == [jobs[-1]]
    early = api.get("/api/v1/usage", params={"until": newest}).json()
    assert len(early["data"]) == 4


def test_another_account_sees_nothing(stack: Stack,
                                      history: tuple[httpx.Client, list[str]]) -> None:
    other = httpx.get(f"{stack.url}/api/v1/usage",
                      headers={"Authorization": f"Bearer {stack.create_key()}"}).json()
    assert other == {"data": [], "next_cursor": None, "models": []}


@pytest.mark.parametrize(
    ("params", "param"),
    [({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"limit": "many"}, "limit"),
     ({"cursor": "zzz"}, "cursor"), ({"cursor": 0}, "cursor"), ({"since": "yesterday"}, "since"),
     ({"model": ""}, "model"), ({"offset": 10}, "offset")],
)
def test_bad_queries_are_400(api: httpx.Client, params: dict[str, Any], param: str) -> None:
    r = api.get("/api/v1/usage", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"code": "invalid_request", "param": param,
                                 "message": r.json()["error"]["message"]}
