"""Every bad request gets a clear 4xx with the SPEC error body and changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from shared.db import session_scope
from shared.tables import Job
from tests.stack import Stack

MSG = [{"role": "user", "content": "hi"}]


def _jobs(stack: Stack) -> int:
    with session_scope(stack.database_url) as s:
        return int(s.execute(select(func.count()).select_from(Job)).scalar_one())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-5.2"}, "messages"),
        ({"model": "gpt-5.2", "messages": []}, "messages"),
        ({"model": "gpt-5.2", "messages": [{"role": "robot", "content": "x"}]},
         "messages.0.role"),
        ({"model": "gpt-5.2", "messages": [{"role": "user"}]}, "messages.0"),
        ({"model": "nope-1", "messages": MSG}, "model"),
        ({"model": "gpt-5.2", "messages": MSG, "stream": "yes"}, "stream"),
        ({"model": "gpt-5.2", "messages": MSG, "max_tokens": "9"}, "max_tokens"),
        ({"model": "gpt-5.2", "messages": MSG, "temperature": 7}, "temperature"),
        ({"model": "gpt-5.2", "messages": MSG, "surprise": 1}, "surprise"),
        ({"model": 5, "messages": MSG}, "model"),
        ({"model": "gpt-5.2", "messages": "hi"}, "messages"),
        ({"model": "gpt-5.2", "messages": MSG, "routing": {"fallback": ["nope"]}}, "model"),
    ],
)
def test_invalid_bodies_are_400(
    stack: Stack, api: httpx.Client, body: dict[str, Any], param: str
) -> None:
    before = _jobs(stack)
    r = api.post("/api/v1/chat", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["message"]
    assert err.get("param") == param
    assert _jobs(stack) == before


@pytest.mark.parametrize("raw", [b"{not json", b"[1,2]", b"", b"\xff\xfe"])
def test_unparseable_bodies_are_400(api: httpx.Client, raw: bytes) -> None:
    r = api.post("/api/v1/chat", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_request"


def test_wrong_content_type_is_400(api: httpx.Client) -> None:
    r = api.post("/api/v1/chat", content=b"model=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400


def test_body_over_limit_is_413(api: httpx.Client) -> None:
    big = [{"role": "user", "content": "x" * 1_100_000}]
    r = api.post("/api/v1/chat", json={"model": "gpt-5.2", "messages": big})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer ch_sk_wrong", "Basic abc",
                                    "Bearer not-a-chorus-key"])
def test_bad_keys_are_401(stack: Stack, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = httpx.post(f"{stack.url}/api/v1/chat", json={"model": "gpt-5.2", "messages": MSG},
                   headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{stack.url}/api/v1/jobs/x", headers=headers).status_code == 401


def test_bad_last_event_id_is_400(api: httpx.Client) -> None:
    job_id = api.post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG}).json()[
        "job_id"]
    r = api.get(f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "abc"})
    assert r.status_code == 400


def test_unknown_route_is_json_404(api: httpx.Client) -> None:
    r = api.get("/api/v1/nothing-here")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
