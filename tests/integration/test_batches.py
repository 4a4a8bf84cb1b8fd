"""Batches end to end: JSONL in, one job a line on a real worker's batch queue, JSONL out;
bad lines refused whole, refused holds reported per line, cancel, other accounts' 404."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from shared.db import session_scope
from shared.keys import hash_key
from shared.schemas import MAX_BATCH_LINES
from shared.tables import Account, ApiKey, Batch, Job, LedgerEntry
from tests.stack import Stack

MSG = [{"role": "user", "content": "Summarise the plot of a heist film."}]
JSONL = {"Content-Type": "application/jsonl"}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat(custom_id: str, model: str = "gpt-5-mini", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "endpoint": "chat",
            "body": {"model": model, "messages": MSG, **body}}


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    key = stack.create_key(credits=1000)
    with httpx.Client(base_url=stack.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def wait_ended(api: httpx.Client, batch_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = api.get(f"/api/v1/batches/{batch_id}").json()
        if view["status"] in ("completed", "cancelled"):
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.05)


def results(api: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    r = api.get(f"/api/v1/batches/{batch_id}/results")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/jsonl")
    return [json.loads(line) for line in r.text.splitlines()]


def account_id(stack: Stack, api: httpx.Client) -> int:
    key = api.headers["Authorization"].removeprefix("Bearer ")
    with session_scope(stack.database_url) as session:
        found: int = session.execute(select(ApiKey.account_id)
                                     .where(ApiKey.key_hash == hash_key(key))).scalar_one()
        return found


def wallet(stack: Stack, api: httpx.Client) -> tuple[Decimal, Decimal, Decimal]:
    """Balance, reserved and the ledger's sum of the account behind the client's key."""
    aid = account_id(stack, api)
    with session_scope(stack.database_url) as session:
        account = session.get(Account, aid)
        assert account is not None
        total = session.execute(select(func.sum(LedgerEntry.amount))
                                .where(LedgerEntry.account_id == aid)).scalar_one()
        return account.balance, account.reserved, total


def test_a_batch_runs_every_line_and_reads_back_in_order(
    stack: Stack, client: httpx.Client, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 5, "token_ms": 1, "tokens": 6})
    lines = [
        chat("q1"),
        {"custom_id": "q2", "endpoint": "compare",
         "body": {"models": ["gpt-5-mini", "gemini-3-flash"], "messages": MSG}},
        chat("q3", "deepseek-v3.2") | {"endpoint": "/api/v1/chat"},
        {"custom_id": "q4", "endpoint": "judge",
         "body": {"contestants": ["gpt-5-mini", "llama-3.3-70b"], "judge": "gpt-5.2",
                  "messages": MSG}},
    ]
    r = client.post("/api/v1/batches", content=jsonl(lines), headers=JSONL)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["counts"]["total"] == 4 and created["status"] in ("in_progress", "completed")
    view = wait_ended(client, created["id"])
    assert view["status"] == "completed" and view["finished_at"] is not None
    assert view["counts"] == {"total": 4, "queued": 0, "running": 0, "succeeded": 4,
                              "failed": 0, "cancelled": 0, "not_submitted": 0}
    out = results(client, created["id"])
    assert [o["custom_id"] for o in out] == ["q1", "q2", "q3", "q4"]
    assert [o["endpoint"] for o in out] == ["chat", "compare", "chat", "judge"]
    assert all(o["status"] == "succeeded" and o["error"] is None for o in out)
    assert out[0]["result"]["full_content"] and out[2]["result"]["full_content"]
    assert [x["model"] for x in out[1]["result"]["results"]] == ["gpt-5-mini", "gemini-3-flash"]
    assert len(out[3]["result"]["scores"]) == 2
    for o in out:  # each line is a job of its own, readable as one
        job = client.get(f"/api/v1/jobs/{o['job_id']}").json()
        assert job["status"] == "succeeded" and job["kind"] == o["endpoint"]
    charged = sum(Decimal(str(o["credits_charged"])) for o in out)
    assert view["credits_charged"] == pytest.approx(float(charged))
    balance, reserved, ledger_sum = wallet(stack, client)
    assert reserved == 0 and balance == ledger_sum
    assert balance == pytest.approx(Decimal(1000) - charged, abs=Decimal("0.00001"))
    # Nothing left to cancel: an ended batch stays as it ended.
    after = client.delete(f"/api/v1/batches/{created['id']}").json()
    assert after["status"] == "completed" and after["cancelled_at"] is None


def test_a_json_body_of_lines_is_a_batch_too(client: httpx.Client, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 5, "token_ms": 1, "tokens": 4})
    r = client.post("/api/v1/batches", json={"lines": [chat("a"), chat("b")]})
    assert r.status_code == 201, r.text
    assert wait_ended(client, r.json()["id"])["counts"]["succeeded"] == 2


TOO_MANY = [chat(f"c{i}") for i in range(MAX_BATCH_LINES + 1)]


@pytest.mark.parametrize(("body", "param"), [
    ([chat("a"), {"custom_id": "b", "endpoint": "chat", "body": {"model": "gpt-5-mini"}}],
     "lines.1.body.messages"),
    ([chat("a"), chat("a")], "lines.1.custom_id"),
    ([{"custom_id": "a", "endpoint": "embed", "body": {}}], "lines.0.endpoint"),
    ([chat("a"), chat("b", "no-such-model")], "lines.1.body.model"),
    ([chat("a", stream=True)], "lines.0.body.stream"),
    ([chat("a", temperature="hot")], "lines.0.body.temperature"),
    ([chat("a") | {"priority": 1}], "lines.0.priority"),
    ([chat("a"), "not an object"], "lines.1"),
    ([], "lines"),
    (TOO_MANY, "lines"),
])
def test_a_bad_line_is_a_400_naming_it_and_creates_nothing(
    stack: Stack, client: httpx.Client, body: list[Any], param: str
) -> None:
    before = wallet(stack, client)
    r = client.post("/api/v1/batches", content=jsonl(body), headers=JSONL)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert "Traceback" not in r.text
    assert wallet(stack, client) == before
    aid = account_id(stack, client)
    with session_scope(stack.database_url) as session:
        assert session.execute(select(func.count()).select_from(Batch)
                               .where(Batch.account_id == aid)).scalar_one() == 0
        assert session.execute(select(func.count()).select_from(Job)
                               .where(Job.account_id == aid)).scalar_one() == 0


@pytest.mark.parametrize(("content", "ctype"), [
    (b'{"custom_id": "a", "endpoint": "chat", "body": {}}\n{not json\n', "application/jsonl"),
    (b"custom_id,endpoint\n", "text/csv"),
    (b'{"items": []}', "application/json"),
])
def test_a_body_that_is_not_a_batch_is_a_400(
    client: httpx.Client, content: bytes, ctype: str
) -> None:
    r = client.post("/api/v1/batches", content=content, headers={"Content-Type": ctype})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"


def test_a_line_whose_hold_is_refused_has_no_job_and_says_why(
    stack: Stack, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 5, "token_ms": 1, "tokens": 4})
    key = stack.create_key(credits=3)
    with httpx.Client(base_url=stack.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as api:
        small = chat("fits", max_tokens=16)
        judge = {"custom_id": "too-dear", "endpoint": "judge",
                 "body": {"contestants": ["gpt-5-mini", "gemini-3-flash"],
                          "judge": "gpt-5.2", "messages": MSG}}
        r = api.post("/api/v1/batches", content=jsonl([small, judge]), headers=JSONL)
        assert r.status_code == 201, r.text
        view = wait_ended(api, r.json()["id"])
        assert view["counts"]["succeeded"] == 1 and view["counts"]["not_submitted"] == 1
        first, second = results(api, r.json()["id"])
        assert first["status"] == "succeeded"
        assert second["status"] == "not_submitted" and second["job_id"] is None
        assert second["error"]["code"] == "insufficient_credits"
        balance, reserved, ledger_sum = wallet(stack, api)
    assert reserved == 0 and balance == ledger_sum
    assert balance == Decimal(3) - Decimal(str(first["credits_charged"]))


def test_cancelling_a_batch_cancels_its_jobs_not_ended(
    stack: Stack, client: httpx.Client, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 20, "token_ms": 30,
                                     "tokens": 300})
    r = client.post("/api/v1/batches", content=jsonl([chat(f"s{i}") for i in range(3)]),
                    headers=JSONL)
    assert r.status_code == 201, r.text
    batch_id = r.json()["id"]
    deadline = time.monotonic() + 10
    while client.get(f"/api/v1/batches/{batch_id}").json()["counts"]["running"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    d = client.delete(f"/api/v1/batches/{batch_id}")
    assert d.status_code == 200 and d.json()["cancelled_at"] is not None
    assert d.json()["status"] in ("cancelling", "cancelled")
    view = wait_ended(client, batch_id, timeout=10)
    assert view["status"] == "cancelled" and view["counts"]["cancelled"] == 3
    balance, reserved, ledger_sum = wallet(stack, client)
    assert reserved == 0 and balance == ledger_sum
    # Each paid for the tokens it produced before the cancel, nothing like a whole answer.
    charged = [o["credits_charged"] for o in results(client, batch_id)]
    assert all(0 < c < 1 for c in charged)


def test_another_accounts_batch_is_not_there(
    stack: Stack, client: httpx.Client, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 5, "token_ms": 1, "tokens": 4})
    r = client.post("/api/v1/batches", content=jsonl([chat("mine")]), headers=JSONL)
    batch_id = r.json()["id"]
    other = stack.create_key(credits=10)
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {other}"}) as o:
        for bid in (batch_id, str(uuid.uuid4()), "not-a-uuid"):
            assert o.get(f"/api/v1/batches/{bid}").status_code == 404
            assert o.get(f"/api/v1/batches/{bid}/results").status_code == 404
            assert o.delete(f"/api/v1/batches/{bid}").status_code == 404
    assert client.get(f"/api/v1/batches/{batch_id}").status_code == 200
    assert httpx.get(f"{stack.url}/api/v1/batches/{batch_id}").status_code == 401
