"""JSONL batch input ends a line at ``\\n`` (or ``\\r\\n``) only: separators Unicode or
Python count as line ends are text inside a line's strings, kept as sent."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from sqlalchemy import select

from shared.db import session_scope
from shared.tables import Job
from tests.stack import Stack

# Each is a line end to str.splitlines(); none is one to JSONL.
SEPARATORS = "\u2028\u2029\u0085\x0b\x0c\x1c\x1d\x1e"


def line(custom_id: str, content: str) -> dict[str, Any]:
    return {"custom_id": custom_id, "endpoint": "chat",
            "body": {"model": "gpt-5-mini", "messages": [{"role": "user", "content": content}]}}


def stored_contents(stack: Stack, job_ids: list[str]) -> dict[str, str]:
    with session_scope(stack.database_url) as session:
        jobs = session.execute(select(Job).where(Job.id.in_(job_ids))).scalars()
        return {j.id: j.request["messages"][0]["content"] for j in jobs if j.request}


def wait_ended(api: httpx.Client, batch_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = api.get(f"/api/v1/batches/{batch_id}").json()
        if view["status"] == "completed":
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.05)


def test_unicode_and_python_line_breaks_stay_inside_their_line(
    stack: Stack, api: httpx.Client, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 0, "token_ms": 0, "tokens": 3})
    contents = {f"q{i}": f"before{sep}after" for i, sep in enumerate(SEPARATORS)}
    # As an ensure_ascii=False writer leaves them (U+2028, U+0085 raw), plus the C0
    # separators raw as well, which strict JSON would have escaped.
    texts = [json.dumps(line(cid, text), ensure_ascii=False) for cid, text in contents.items()]
    raw = {"\\u000b": "\x0b", "\\f": "\x0c", "\\u001c": "\x1c", "\\u001d": "\x1d",
           "\\u001e": "\x1e"}
    for escaped, char in raw.items():
        texts = [t.replace(escaped, char) for t in texts]
    body = "\r\n".join(texts[:4]) + "\r\n\n  \n" + "\n".join(texts[4:])  # no final newline
    assert all(sep in body for sep in SEPARATORS)
    r = api.post("/api/v1/batches", content=body.encode(),
                 headers={"Content-Type": "application/jsonl"})
    assert r.status_code == 201, r.text
    assert r.json()["counts"]["total"] == len(SEPARATORS)
    batch_id = r.json()["id"]
    assert wait_ended(api, batch_id)["counts"]["succeeded"] == len(SEPARATORS)
    results = [json.loads(x) for x in
               api.get(f"/api/v1/batches/{batch_id}/results").text.split("\n") if x]
    assert [x["custom_id"] for x in results] == list(contents)
    stored = stored_contents(stack, [x["job_id"] for x in results])
    assert {x["custom_id"]: stored[x["job_id"]] for x in results} == contents
