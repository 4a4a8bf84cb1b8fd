"""Credits on the real stack: no overdraft under a burst, no double charge on redelivery,
budgets, the credits endpoint, and 503 (never a free request) when the database is down."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select

from shared import events, keys, ledger, pricing
from shared.db import session_scope
from shared.registry import get_registry
from shared.schemas import ChatRequest
from shared.settings import Settings
from shared.tables import ApiKey, Job, LedgerEntry, RequestLog
from tests.sse import iter_sse, read_stream
from tests.stack import Stack

MSG = [{"role": "user", "content": "hi"}]
FAST = {"model": "gpt-5-mini", "ttft_ms": 0, "token_ms": 0, "tokens": 10}


def hold_for(body: dict[str, Any]) -> Decimal:
    """The API's reservation for this chat body, computed the way the API computes it."""
    dumped = ChatRequest.model_validate(body).model_dump(mode="json", exclude_none=True)
    return pricing.reservation("chat", pricing.plan_calls("chat", dumped, get_registry()))


def account_of(stack: Stack, key: str) -> int:
    with session_scope(stack.database_url) as s:
        owner = keys.lookup(s, key)
        assert owner is not None
        return owner.account_id


def audit(stack: Stack, account_id: int) -> ledger.Wallet:
    with session_scope(stack.database_url) as s:
        wallet, summed = ledger.audit(s, account_id)
    assert wallet == summed, (wallet, summed)
    return wallet


def client(stack: Stack, key: str, base: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=base or stack.url, timeout=60,
                        headers={"Authorization": f"Bearer {key}"},
                        limits=httpx.Limits(max_connections=250))


def job_rows(stack: Stack, job_id: str) -> list[tuple[str, Decimal, Decimal]]:
    with session_scope(stack.database_url) as s:
        rows = s.execute(
            select(LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.hold)
            .where(LedgerEntry.job_id == job_id).order_by(LedgerEntry.id)
        ).all()
    return [(k, Decimal(a), Decimal(h)) for k, a, h in rows]


def finals(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    raw = redis.Redis.from_url(stack.redis_url).lrange(events.events_key(job_id), 0, -1)
    texts = [r if isinstance(r, str) else r.decode() for r in raw]
    return [json.loads(t) for t in texts if events.is_final(t)]


def test_200_concurrent_requests_on_credits_for_50(stack: Stack, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json=FAST)
    body = {"model": "gpt-5-mini", "messages": MSG, "max_tokens": 10}
    hold = hold_for(body)
    key = stack.create_key(credits=hold * 50, tier="paid")
    acct = account_of(stack, key)
    lowest: list[Decimal] = []
    running = True

    def watch() -> None:
        # Sample the wallet the whole time: it must never be overdrawn, even for a moment.
        while running:
            with session_scope(stack.database_url) as s:
                w = ledger.wallet(s, acct)
            lowest.append(min(w.balance, w.available))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with client(stack, key) as api, ThreadPoolExecutor(max_workers=200) as pool:
            barrier = threading.Barrier(200)

            def send(_: int) -> httpx.Response:
                barrier.wait()
                return api.post("/api/v1/chat", json=body)

            responses = list(pool.map(send, range(200)))
    finally:
        running = False
        watcher.join()
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 402}, [r.text for r in responses if r.status_code not in
                                         (200, 402)][:3]
    # Each run costs all but a hair of its hold, so 50 holds is exactly 50 runs.
    assert statuses[200] == 50, statuses
    for r in (r for r in responses if r.status_code == 402):
        err = r.json()
        assert err["error"]["code"] == "insufficient_credits"
        assert err["required"] == float(hold) and 0 <= err["credits"] < float(hold)
    assert lowest and min(lowest) >= 0
    wallet = audit(stack, acct)
    assert wallet.reserved == 0 and wallet.balance >= 0
    charged = sum(Decimal(str(r.json()["credits_charged"])) for r in responses
                  if r.status_code == 200)
    assert wallet.balance == ledger.q(hold * 50 - charged)
    with session_scope(stack.database_url) as s:
        # A refused request leaves no job row behind, and every run settled exactly once.
        jobs = s.execute(select(func.count()).select_from(Job).where(Job.account_id == acct))
        assert jobs.scalar_one() == 50
        kinds = Counter(s.execute(
            select(LedgerEntry.kind).where(LedgerEntry.account_id == acct)
        ).scalars())
    assert kinds == {"grant": 1, "reserve": 50, "settle": 50}


def test_credits_endpoint_pages_the_ledger(stack: Stack, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json=FAST)
    key = stack.create_key(credits=100)
    with client(stack, key) as api:
        done = api.post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG}).json()
        page = api.get("/api/v1/credits", params={"limit": 3}).json()
        rest = api.get("/api/v1/credits", params={"limit": 2, "cursor": page["ledger"][1]["id"]})
    charged = done["credits_charged"]
    assert page["reserved"] == 0
    assert page["balance"] == page["available"] == pytest.approx(100 - charged, abs=1e-6)
    assert [e["kind"] for e in page["ledger"]] == ["settle", "reserve", "grant"]
    assert [e["job_id"] for e in page["ledger"]] == [done["job_id"], done["job_id"], None]
    assert page["ledger"][0]["amount"] == pytest.approx(-charged, abs=1e-6)
    assert page["ledger"][0]["hold"] == -page["ledger"][1]["hold"]  # the whole hold released
    assert page["next_cursor"] == str(page["ledger"][2]["id"])
    assert rest.status_code == 200
    assert [e["kind"] for e in rest.json()["ledger"]] == ["grant"]
    assert rest.json()["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "param"),
    [({"limit": 0}, "limit"), ({"limit": 500}, "limit"), ({"limit": "x"}, "limit"),
     ({"cursor": "abc"}, "cursor"), ({"cursor": -4}, "cursor"), ({"page": 2}, "page")],
)
def test_bad_credits_queries_are_400(api: httpx.Client, params: dict[str, Any],
                                     param: str) -> None:
    r = api.get("/api/v1/credits", params=params)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_a_redelivered_task_does_not_charge_again(stack: Stack, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json=FAST)
    key = stack.create_key(credits=100)
    acct = account_of(stack, key)
    with client(stack, key) as api:
        job_id = api.post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG}
                          ).json()["job_id"]
    before = (audit(stack, acct), job_rows(stack, job_id), len(finals(stack, job_id)))
    # The broker hands the same task out again (as after a lost ack), twice.
    from workers.app import make_celery

    producer = make_celery(Settings(redis_url=stack.redis_url, broker_url=stack.redis_url))
    sent = [producer.send_task("chorus.run_job", args=[job_id], queue="interactive").id
            for _ in range(2)]
    log = stack.logs / "worker.log"
    deadline = time.monotonic() + 20
    while not all(f"Task chorus.run_job[{t}] succeeded" in log.read_text() for t in sent):
        assert time.monotonic() < deadline, "the worker never ran the redelivered task"
        time.sleep(0.1)
    assert (audit(stack, acct), job_rows(stack, job_id), len(finals(stack, job_id))) == before
    assert before[2] == 1


def test_a_task_redelivered_mid_job_finishes_it_once(stack: Stack, mock: httpx.Client) -> None:
    """The broker hands the task out again while the first run is still streaming: both
    runs reach the end, one settles and announces, the other writes nothing."""
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 20, "token_ms": 40,
                                     "tokens": 25})
    key = stack.create_key(credits=100)
    acct = account_of(stack, key)
    from workers.app import make_celery

    producer = make_celery(Settings(redis_url=stack.redis_url, broker_url=stack.redis_url))
    body = {"model": "gpt-5-mini", "messages": MSG, "stream": True}
    twin = ""
    seen: list[str] = []
    with client(stack, key) as api, api.stream("POST", "/api/v1/chat", json=body) as resp:
        job_id = resp.headers["X-Chorus-Job-Id"]
        for _, data in iter_sse(resp):
            seen.append(data)
            if len(seen) == 2:  # the first run is streaming: hand the task out again
                twin = producer.send_task("chorus.run_job", args=[job_id],
                                          queue="interactive").id
            if data == "[DONE]":
                break
    assert twin and seen[-1] == "[DONE]"
    log = stack.logs / "worker.log"
    deadline = time.monotonic() + 20
    while f"Task chorus.run_job[{twin}] succeeded" not in log.read_text():
        assert time.monotonic() < deadline, "the twin run never ended"
        time.sleep(0.1)
    assert len(finals(stack, job_id)) == 1
    rows = job_rows(stack, job_id)
    assert [k for k, _, _ in rows] == ["reserve", "settle"]
    with session_scope(stack.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        logged = s.execute(select(func.count()).select_from(RequestLog)
                           .where(RequestLog.job_id == job_id)).scalar_one()
    assert job.credits_charged == -rows[1][1]
    assert logged == 1  # the twin's call was not logged (or billed) a second time
    assert audit(stack, acct).balance == ledger.q(Decimal(100) + rows[1][1])


@pytest.fixture
def lone_worker(stack: Stack) -> Iterator[dict[str, str]]:
    """The shared worker stopped, so jobs go only to this test's short-visibility workers."""
    stack.stop_proc("worker")
    env = {"CHORUS_BROKER_VISIBILITY_TIMEOUT": "3"}
    try:
        yield env
    finally:
        for name in ("w-kill", "w-after"):
            if name in stack.procs:
                stack.stop_proc(name)
        stack.start_worker()


def test_a_worker_killed_mid_job_charges_once(
    stack: Stack, mock: httpx.Client, lone_worker: dict[str, str]
) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 20, "token_ms": 80,
                                     "tokens": 20})
    stack.start_worker("w-kill", env=lone_worker)
    key = stack.create_key(credits=100)
    acct = account_of(stack, key)
    body = {"model": "gpt-5-mini", "messages": MSG, "stream": True, "keep_running": True}
    with client(stack, key) as api, api.stream("POST", "/api/v1/chat", json=body) as resp:
        job_id = resp.headers["X-Chorus-Job-Id"]
        first = read_stream(resp, stop_after=3)
    stack.stop_proc("w-kill", signal.SIGKILL)
    assert len(first.events) == 3
    with session_scope(stack.database_url) as s:
        assert s.get(Job, job_id).status == "running"  # type: ignore[union-attr]
    # Once the visibility timeout has passed the broker hands the task to the new worker;
    # it waits out the dead worker's lease, then takes the job over.
    stack.start_worker("w-after", env=lone_worker)
    deadline = time.monotonic() + 60
    while True:
        with session_scope(stack.database_url) as s:
            job = s.get(Job, job_id)
            assert job is not None
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, "the killed worker's job was never redone"
        time.sleep(0.2)
    assert job.status == "succeeded"
    rows = job_rows(stack, job_id)
    assert [k for k, _, _ in rows] == ["reserve", "settle"]
    charged = -rows[1][1]
    assert job.credits_charged == charged
    assert audit(stack, acct) == ledger.Wallet(ledger.q(Decimal(100) - charged), Decimal(0))
    with client(stack, key) as api, api.stream("GET", f"/api/v1/jobs/{job_id}/events") as r:
        replay = read_stream(r)
    assert replay.done
    assert any(e["event"] == "retry" for e in replay.events)
    assert [e for e in replay.events if e.get("final")] == [replay.final]
    assert replay.final["credits_charged"] == float(charged)


def set_key_budget(stack: Stack, key: str, limit: Decimal) -> None:
    with session_scope(stack.database_url) as s:
        key_id = s.execute(select(ApiKey.id).where(ApiKey.key_hash == keys.hash_key(key)))
        from shared import budgets

        budgets.set_key_budget(s, key_id.scalar_one(), limit)


def test_key_budget_refuses_with_402(stack: Stack, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json=FAST)
    body = {"model": "gpt-5-mini", "messages": MSG, "max_tokens": 10}
    hold = hold_for(body)
    key = stack.create_key(credits=1000)
    set_key_budget(stack, key, hold * 2)  # two worst cases fit, a third does not
    with client(stack, key) as api:
        assert api.post("/api/v1/chat", json=body).status_code == 200
        assert api.post("/api/v1/chat", json=body).status_code == 200
        refused = api.post("/api/v1/chat", json=body)
        view = api.get("/api/v1/budgets").json()
    assert refused.status_code == 402
    err = refused.json()
    assert err["error"]["code"] == "budget_exceeded"
    assert err["required"] == float(hold)
    assert err["budget"]["scope"] == "key" and err["budget"]["limit"] == float(hold * 2)
    assert 0 < err["credits"] < float(hold)  # what two runs left unspent of the cap
    assert view["key"]["limit"] == float(hold * 2) and view["key"]["reserved"] == 0
    assert view["key"]["spent"] == pytest.approx(float(hold * 2) - err["credits"], abs=1e-6)


def test_session_budgets_cap_each_chat_user(stack: Stack, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json=FAST)
    key = stack.create_key(credits=1000)
    acct = account_of(stack, key)
    body = {"model": "gpt-5-mini", "messages": MSG, "max_tokens": 10}
    hold = float(hold_for(body))
    with client(stack, key) as api:
        r = api.put("/api/v1/budgets/session-default", json={"limit": hold * 1.5})
        assert r.status_code == 200
        assert r.json()["session_default"] == pytest.approx(hold * 1.5, abs=1e-6)
        assert api.post("/api/v1/chat", json={**body, "session_id": "alice"}).status_code == 200
        refused = api.post("/api/v1/chat", json={**body, "session_id": "alice"})
        assert api.post("/api/v1/chat", json={**body, "session_id": "bob"}).status_code == 200
        assert api.post("/api/v1/chat", json=body).status_code == 200  # no session, no cap
        vip = api.put("/api/v1/budgets/sessions/alice", json={"limit": hold * 10})
        again = api.post("/api/v1/chat", json={**body, "session_id": "alice"})
        alice = api.get("/api/v1/budgets/sessions/alice").json()
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.json()["budget"]["scope"] == "session"
    assert vip.status_code == 200 and vip.json()["limit"] == pytest.approx(hold * 10)
    assert again.status_code == 200  # a raised cap applies at once, in every process
    assert alice["reserved"] == 0 and alice["spent"] > hold
    audit(stack, acct)


@pytest.mark.parametrize(
    "body",
    [{}, {"limit": -1}, {"limit": "5"}, {"limit": 5, "extra": 1}, {"limit": 1e13}, [5]],
)
def test_bad_budget_bodies_are_400(api: httpx.Client, body: Any) -> None:
    r = api.put("/api/v1/budgets/session-default", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert api.get("/api/v1/budgets").json()["session_default"] is None


def test_database_down_is_503_never_a_free_request(stack: Stack, mock: httpx.Client) -> None:
    key = stack.create_key(credits=100)
    dead = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"
    url = stack.start_api("api-dead-db", env={"CHORUS_DATABASE_URL": dead})
    try:
        with client(stack, key, base=url) as api:
            chat = api.post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG})
            credits = api.get("/api/v1/credits")
    finally:
        stack.stop_proc("api-dead-db")
    for r in (chat, credits):
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable"
        assert "database" in r.json()["error"]["message"]
    assert mock.get("/_mock/stats").json()["calls"].get("gpt-5-mini", 0) == 0
    assert audit(stack, account_of(stack, key)) == ledger.Wallet(Decimal(100), Decimal(0))


def test_unknown_session_budget_path_is_validated(api: httpx.Client) -> None:
    r = api.get(f"/api/v1/budgets/sessions/{'x' * 201}")
    assert r.status_code == 400 and r.json()["error"]["param"] == "session_id"
    fresh = api.get(f"/api/v1/budgets/sessions/{uuid.uuid4().hex}").json()
    assert fresh["limit"] is None and fresh["spent"] == 0
