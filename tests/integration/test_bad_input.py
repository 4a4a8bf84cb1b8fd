"""Every bad request gets a clear 4xx with the SPEC error body and changes nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import websocket
from sqlalchemy import func, select

from shared.db import session_scope
from shared.tables import Job
from tests.integration.footprint import unchanged
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


@pytest.mark.parametrize(("raw", "code"), [
    (b"{not json", "invalid_json"), (b"[1,2]", "invalid_request"), (b"", "invalid_json"),
    (b"\xff\xfe", "invalid_json"), (b'{"model": "\xff"}', "invalid_json"),
])
def test_unparseable_bodies_are_400(api: httpx.Client, raw: bytes, code: str) -> None:
    r = api.post("/api/v1/chat", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code


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


# Deeply nested JSON: a 400 invalid_json wherever a body is read, never a 500.

TOP_DEEP = b"[" * 10_000 + b"]" * 10_000
# Deeper than the parser's 200 levels, inside an otherwise plausible body: shallow enough
# for Python's json module, which would hand it on.
FIELD_DEEP = (b'{"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}], '
              b'"response_format": ' + b"[" * 300 + b"]" * 300 + b"}")
BODY_ENTRY_POINTS = [
    ("POST", "/api/v1/chat"), ("POST", "/api/v1/compare"), ("POST", "/api/v1/blend"),
    ("POST", "/api/v1/judge"), ("POST", "/v1/chat/completions"), ("POST", "/api/v1/batches"),
    ("PUT", "/api/v1/budgets/session-default"), ("PUT", "/api/v1/budgets/sessions/s1"),
    ("PUT", "/api/v1/byok/openai"),
]


@pytest.mark.parametrize("raw", [TOP_DEEP, FIELD_DEEP], ids=["top", "field"])
@pytest.mark.parametrize(("method", "path"), BODY_ENTRY_POINTS)
def test_deeply_nested_json_is_400(
    stack: Stack, api: httpx.Client, key: str, method: str, path: str, raw: bytes
) -> None:
    with unchanged(stack, key):
        r = api.request(method, path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_json"
    assert "200 levels" in err["message"]


def test_a_deeply_nested_jsonl_line_is_400_naming_it(
    stack: Stack, api: httpx.Client, key: str
) -> None:
    good = json.dumps({"custom_id": "a", "endpoint": "chat",
                       "body": {"model": "gpt-5-mini", "messages": MSG}}).encode()
    for deep in (TOP_DEEP, FIELD_DEEP):
        with unchanged(stack, key):
            r = api.post("/api/v1/batches", content=good + b"\n" + deep + b"\n",
                         headers={"Content-Type": "application/jsonl"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_json"
        assert r.json()["error"]["param"] == "lines.1"


def test_nesting_a_real_body_needs_is_accepted(api: httpx.Client) -> None:
    """The limit is far above what a tool's JSON Schema nests."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        schema = {"type": "object", "properties": {"inner": schema}}
    tool = {"type": "function", "function": {"name": "deep", "parameters": schema}}
    r = api.post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG,
                                       "tools": [tool]})
    assert r.status_code == 200, r.text


def ws_connect(stack: Stack, key: str | None = None) -> websocket.WebSocket:
    headers = [f"Authorization: Bearer {key}"] if key else []
    return websocket.create_connection(stack.url.replace("http://", "ws://") + "/api/v1/ws",
                                       timeout=15, header=headers)


def test_deeply_nested_ws_message_before_auth_is_an_error_then_a_clean_close(
    stack: Stack
) -> None:
    conn = ws_connect(stack)
    conn.send(TOP_DEEP.decode())
    err = json.loads(conn.recv())
    assert (err["type"], err["status"], err["error"]["code"]) == ("error", 400, "invalid_json")
    opcode, frame = conn.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1008
    conn.close()


def test_deeply_nested_ws_message_after_auth_leaves_the_socket_usable(
    stack: Stack, key: str
) -> None:
    conn = ws_connect(stack, key)
    assert json.loads(conn.recv()) == {"type": "ready"}
    with unchanged(stack, key):
        for deep in (TOP_DEEP, FIELD_DEEP.replace(b"{", b'{"type": "chat", "id": "d", ', 1)):
            conn.send(deep.decode())
            err = json.loads(conn.recv())
            assert (err["status"], err["error"]["code"]) == (400, "invalid_json")
    conn.send(json.dumps({"type": "ping", "id": "p"}))
    assert json.loads(conn.recv()) == {"type": "pong", "id": "p"}
    conn.close()


# Control characters in paths and query strings: a 400 naming the parameter (a 404 when
# no route matches), never a 500.

@pytest.mark.parametrize(("method", "path", "param"), [
    ("GET", "/api/v1/jobs/a%00b", "job_id"),
    ("DELETE", "/api/v1/jobs/%00", "job_id"),
    ("GET", "/api/v1/jobs/a%0Ab/events", "job_id"),
    ("GET", "/api/v1/batches/%0D%0A", "batch_id"),
    ("GET", "/api/v1/batches/x%1B/results", "batch_id"),
    ("GET", "/api/v1/budgets/sessions/s%00", "session_id"),
    ("PUT", "/api/v1/budgets/sessions/s%00", "session_id"),
    ("PUT", "/api/v1/budgets/sessions/s%0A", "session_id"),
    ("PUT", "/api/v1/budgets/sessions/s%C2%85", "session_id"),
    ("GET", "/v1/models/gpt%00", "model_id"),
    ("GET", "/api/v1/usage?model=%00", "model"),
    ("GET", "/api/v1/usage?model=a%0D%0Ab", "model"),
    ("GET", "/api/v1/usage?since=%0A2026-01-01", "since"),
    ("GET", "/api/v1/credits?limit=5%7F", "limit"),
    ("GET", "/api/v1/credits?a%00=1", "a\\x00"),
    ("GET", "/api/v1/jobs/x/events?last_event_id=%00", "last_event_id"),
])
def test_control_characters_in_a_url_are_400(
    stack: Stack, api: httpx.Client, key: str, method: str, path: str, param: str
) -> None:
    with unchanged(stack, key):
        r = api.request(method, path, json={"limit": 5} if method == "PUT" else None)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["param"] == param


@pytest.mark.parametrize("path", ["/api/v1/nothing%00", "/healthz%0A", "/api/v1/cred%00its"])
def test_control_characters_in_a_path_no_route_matches_are_404(
    api: httpx.Client, path: str
) -> None:
    r = api.get(path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_a_session_id_with_a_control_character_is_refused_in_a_body(
    stack: Stack, api: httpx.Client, key: str
) -> None:
    with unchanged(stack, key):
        r = api.post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG,
                                           "session_id": "a\nb"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "session_id"


# Duplicate models across model + routing.fallback: a 400 naming the repeat, not a charge.

@pytest.mark.parametrize(("fallback", "param"), [
    (["gpt-5.2", "gpt-5-mini"], "routing.fallback.1"),
    (["gpt-5-mini"], "routing.fallback.0"),
    (["gpt-5.2", "claude-sonnet-4.5", "gpt-5.2"], "routing.fallback.2"),
])
def test_a_model_twice_in_a_chain_is_400(
    stack: Stack, api: httpx.Client, key: str, fallback: list[str], param: str
) -> None:
    with unchanged(stack, key):
        r = api.post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG,
                                           "routing": {"fallback": fallback}})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["param"] == param
    assert "already in the chain" in err["message"]


def test_a_model_twice_in_an_openai_chain_is_400(stack: Stack, api: httpx.Client,
                                                 key: str) -> None:
    with unchanged(stack, key):
        r = api.post("/v1/chat/completions", json={
            "model": "gpt-5-mini", "messages": MSG,
            "chorus": {"fallback": ["gpt-5.2", "gpt-5-mini"]}})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["param"] == "chorus.fallback.1"
    assert err["type"] == "invalid_request_error"


def test_a_model_twice_in_a_ws_chain_is_an_error(stack: Stack, key: str) -> None:
    conn = ws_connect(stack, key)
    assert json.loads(conn.recv()) == {"type": "ready"}
    with unchanged(stack, key):
        conn.send(json.dumps({"type": "chat", "id": "c", "model": "gpt-5-mini",
                              "messages": MSG, "routing": {"fallback": ["gpt-5-mini"]}}))
        err = json.loads(conn.recv())
    assert (err["id"], err["status"], err["error"]["param"]) == (
        "c", 400, "routing.fallback.0")
    conn.close()


def test_a_model_twice_in_a_batch_line_chain_is_400(stack: Stack, api: httpx.Client,
                                                    key: str) -> None:
    lines = [{"custom_id": "ok", "endpoint": "chat",
              "body": {"model": "gpt-5-mini", "messages": MSG}},
             {"custom_id": "dup", "endpoint": "chat",
              "body": {"model": "gpt-5-mini", "messages": MSG,
                       "routing": {"fallback": ["gpt-5.2", "gpt-5.2"]}}}]
    with unchanged(stack, key):
        r = api.post("/api/v1/batches", content="".join(json.dumps(x) + "\n" for x in lines),
                     headers={"Content-Type": "application/jsonl"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "lines.1.body.routing.fallback.1"


def test_a_chain_of_distinct_models_is_accepted(api: httpx.Client) -> None:
    r = api.post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG,
                                       "routing": {"fallback": ["gpt-5.2"]}})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("api_key", ["sk-abc\x00defghij", "sk-abc\x1bdefghij", "sk-äbcdefghij"])
def test_a_provider_key_with_a_control_or_non_ascii_character_is_400(
    stack: Stack, api: httpx.Client, key: str, api_key: str
) -> None:
    with unchanged(stack, key):
        r = api.put("/api/v1/byok/openai", json={"api_key": api_key})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "api_key"
