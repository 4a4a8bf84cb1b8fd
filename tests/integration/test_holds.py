"""Holds that fit, on the real stack (PostgreSQL and SQLite): a call is held for a typical
answer, a longer one extends its hold as it streams and is charged exactly, and one whose
extension is refused stops with ``finish_reason: "length"`` and a notice, never overdrawn."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from shared import keys, ledger, pricing
from shared.db import session_scope
from shared.registry import get_registry
from shared.tables import Job, LedgerEntry, RequestLog
from tests.integration.test_exact_money import sqlite_stack  # noqa: F401 (a fixture)
from tests.sse import Stream, stream_post
from tests.stack import Stack

HI = [{"role": "user", "content": "hi"}]
MINI = "gpt-5-mini"


@pytest.fixture(params=["postgresql", "sqlite"])
def any_stack(request: pytest.FixtureRequest) -> Stack:
    return request.getfixturevalue("stack" if request.param == "postgresql" else "sqlite_stack")


def api(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url, timeout=60, headers={"Authorization": f"Bearer {key}"},
                        limits=httpx.Limits(max_connections=250))


def account_of(stack: Stack, key: str) -> int:
    with session_scope(stack.database_url) as s:
        owner = keys.lookup(s, key)
        assert owner is not None
        return owner.account_id


def hold_of(body: dict[str, Any]) -> Decimal:
    return pricing.reservation("chat", pricing.plan_calls("chat", body, get_registry()))


def exact(stack: Stack, acct: int, granted: Decimal) -> Decimal:
    """Audit: the wallet equals its ledger, holds nothing, paid what its jobs were charged
    (which is what their calls cost, plus base credits); returns what was charged."""
    with session_scope(stack.database_url) as s:
        wallet, summed = ledger.audit(s, acct)
        charged = Decimal(s.execute(select(func.coalesce(func.sum(Job.credits_charged), 0))
                                    .where(Job.account_id == acct)).scalar_one())
        running = s.execute(select(func.count()).select_from(Job).where(
            Job.account_id == acct, Job.status.not_in(("succeeded", "failed", "cancelled")))
        ).scalar_one()
    assert wallet == summed, (wallet, summed)
    assert running == 0
    assert wallet == ledger.Wallet(granted - charged, Decimal(0))
    return charged


def job_hold(stack: Stack, job_id: str) -> tuple[Decimal, Decimal, Decimal]:
    """(the reserve row's hold, the job's credits_reserved, what the settle released)."""
    with session_scope(stack.database_url) as s:
        rows = {kind: hold for kind, hold in s.execute(
            select(LedgerEntry.kind, LedgerEntry.hold).where(LedgerEntry.job_id == job_id))}
        job = s.get(Job, job_id)
        assert job is not None
        return Decimal(rows["reserve"]), job.credits_reserved, -Decimal(rows["settle"])


def call_costs(stack: Stack, job_id: str) -> Decimal:
    with session_scope(stack.database_url) as s:
        return Decimal(s.execute(select(func.sum(RequestLog.cost))
                                 .where(RequestLog.job_id == job_id)).scalar_one())


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_gpt_5_2_hi_holds_a_few_credits_and_a_100_credit_wallet_chats(
    any_stack: Stack, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5.2", "ttft_ms": 0, "token_ms": 0})
    body = {"model": "gpt-5.2", "messages": HI}
    hold = hold_of(body)
    assert hold < 7  # it was 164.85: the model's whole output limit
    key = any_stack.create_key(credits=100)
    with api(any_stack, key) as client:
        answers = [client.post("/api/v1/chat", json=body) for _ in range(3)]
    for r in answers:
        assert r.status_code == 200, r.text
        reserve, _, released = job_hold(any_stack, r.json()["job_id"])
        assert reserve == released == hold
        assert Decimal(str(r.json()["credits_charged"])) == 1 + call_costs(
            any_stack, r.json()["job_id"])
    exact(any_stack, account_of(any_stack, key), Decimal(100))


def test_a_20_credit_session_cap_takes_requests_without_max_tokens(
    any_stack: Stack, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5.2", "ttft_ms": 0, "token_ms": 0})
    key = any_stack.create_key(credits=1000)
    with api(any_stack, key) as client:
        r = client.put("/api/v1/budgets/session-default", json={"limit": 20})
        assert r.status_code == 200, r.text
        r = client.post("/api/v1/chat", json={"model": "gpt-5.2", "messages": HI,
                                              "session_id": "user-1"})
        assert r.status_code == 200, r.text
        used = client.get("/api/v1/budgets/sessions/user-1").json()
    assert used["spent"] == r.json()["credits_charged"] and used["reserved"] == 0


def test_a_60_credit_wallet_runs_every_one_credit_batch_line(
    any_stack: Stack, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": MINI, "ttft_ms": 0, "token_ms": 0, "tokens": 5})
    key = any_stack.create_key(credits=60)
    lines = [json.dumps({"custom_id": f"q{i}", "endpoint": "chat",
                         "body": {"model": MINI, "messages": HI}}) for i in range(5)]
    with api(any_stack, key) as client:
        r = client.post("/api/v1/batches", content="\n".join(lines) + "\n",
                        headers={"Content-Type": "application/jsonl"})
        assert r.status_code == 201, r.text
        batch = r.json()["id"]

        def ended() -> bool:
            return client.get(f"/api/v1/batches/{batch}").json()["status"] == "completed"

        wait_for("the batch", ended)
        counts = client.get(f"/api/v1/batches/{batch}").json()["counts"]
    assert counts.get("succeeded") == 5 and not counts.get("not_submitted"), counts
    exact(any_stack, account_of(any_stack, key), Decimal(60))


def test_a_long_answer_extends_its_hold_and_is_charged_exactly(
    any_stack: Stack, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": MINI, "ttft_ms": 0, "token_ms": 0,
                                     "tokens": 2000})
    body = {"model": MINI, "messages": HI}
    key = any_stack.create_key(credits=100)
    with api(any_stack, key) as client:
        s = stream_post(client, "/api/v1/chat", body)
    assert s.status == 200 and s.done
    final = s.final
    assert not [e for e in s.events if e.get("event") == "budget"]
    done = next(e for e in s.events if e.get("done"))
    assert done["finish_reason"] == "stop" and done["completion_tokens"] == 2000
    reserve, job_reserved, released = job_hold(any_stack, final["job_id"])
    assert reserve == job_reserved == released > hold_of(body)
    # Charged the whole cost: the hold grew past it, so the cap did not cut it.
    cost = get_registry().get(MINI).cost(done["prompt_tokens"], 2000)
    assert Decimal(str(final["credits_charged"])) == 1 + cost < reserve
    exact(any_stack, account_of(any_stack, key), Decimal(100))


def budget_events(s: Stream) -> list[dict[str, Any]]:
    return [e for e in s.events if e.get("event") == "budget"]


def test_a_refused_extension_stops_the_answer_with_length_and_a_notice(
    any_stack: Stack, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": MINI, "ttft_ms": 0, "token_ms": 1,
                                     "tokens": 3000})
    body = {"model": MINI, "messages": HI}
    hold = hold_of(body)
    granted = hold + Decimal("0.5")  # the first hold fits, its doubling does not
    key = any_stack.create_key(credits=granted)
    with api(any_stack, key) as client:
        s = stream_post(client, "/api/v1/chat", body)
    assert s.status == 200 and s.done
    [notice] = budget_events(s)
    assert notice["reason"] == "insufficient_credits" and notice["model"] == MINI
    assert not notice.get("final") and notice["message"]
    done = next(e for e in s.events if e.get("done"))
    assert done["finish_reason"] == "length" and 0 < done["completion_tokens"] < 3000
    assert s.events.index(notice) < s.events.index(done)
    final = s.final
    assert final["event"] == "done"
    # Paid for what was produced, within the hold that never grew.
    reserve, _, released = job_hold(any_stack, final["job_id"])
    assert reserve == released == hold
    charged = Decimal(str(final["credits_charged"]))
    assert charged == 1 + call_costs(any_stack, final["job_id"]) <= hold
    exact(any_stack, account_of(any_stack, key), granted)
    # The provider's stream was closed, not read to its end.
    wait_for("the mock to see the client go", lambda: mock.get("/_mock/stats").json()
             ["client_disconnects"].get(MINI, 0) >= 1)


def test_200_concurrent_streams_on_a_small_wallet(any_stack: Stack, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": MINI, "ttft_ms": 0, "token_ms": 1,
                                     "tokens": 1500})
    body = {"model": MINI, "messages": HI}
    granted = hold_of(body) * 40  # 40 first holds of 200 streams, fewer extensions
    key = any_stack.create_key(credits=granted)
    acct = account_of(any_stack, key)
    with api(any_stack, key) as client, ThreadPoolExecutor(max_workers=200) as pool:
        streams = list(pool.map(lambda _: stream_post(client, "/api/v1/chat", body),
                                range(200)))
    statuses = Counter(s.status for s in streams)
    assert set(statuses) <= {200, 402} and statuses[200] >= 20, statuses
    ran = [s for s in streams if s.status == 200]
    assert all(s.done and s.final["event"] == "done" for s in ran)
    reasons = Counter(e["reason"] for s in ran for e in budget_events(s))
    assert set(reasons) <= {"insufficient_credits"} and reasons, reasons
    charged = exact(any_stack, acct, granted)
    assert charged == sum(Decimal(str(s.final["credits_charged"])) for s in ran)
    with session_scope(any_stack.database_url) as s:
        kinds = Counter(s.execute(select(LedgerEntry.kind)
                                  .where(LedgerEntry.account_id == acct)).scalars())
    assert kinds == {"grant": 1, "reserve": len(ran), "settle": len(ran)}
