"""A client that leaves mid-stream stops the provider call within a second and pays only
for the tokens produced, unless it asked the job to keep running."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai
from sqlalchemy import func, select

from shared.db import session_scope
from shared.registry import get_registry
from shared.tables import Account, ApiKey, Job, LedgerEntry, RequestLog
from tests.sse import iter_sse
from tests.stack import Stack

MSG = [{"role": "user", "content": "Write a long story about gateways."}]
# 400 tokens at 30 ms: a 12 s answer, so a cancelled one is clearly cut short.
SLOW = {"ttft_ms": 20, "token_ms": 30, "tokens": 400}
# The first token 8 s away: a model that thinks before it answers.
THINKING = {"ttft_ms": 8000, "token_ms": 10, "tokens": 20}


CHAT = {"model": "gpt-5.2", "messages": MSG, "stream": True}


@contextmanager
def account(stack: Stack, mock: httpx.Client, profile: dict[str, int]
            ) -> Iterator[httpx.Client]:
    """A client of a new account with 1000 credits, ``gpt-5.2`` on the mock at
    ``profile``."""
    key = stack.create_key(credits=1000)
    mock.post("/_mock/config", json={"model": "gpt-5.2", **profile})
    with httpx.Client(base_url=stack.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as api:
        yield api


def wait_until(check: Any, timeout: float, step: float = 0.02) -> float:
    """Seconds until ``check()`` is true; fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(step)
    return time.monotonic() - start


def stats(mock: httpx.Client) -> dict[str, Any]:
    data: dict[str, Any] = mock.get("/_mock/stats").json()
    return data


def final_job(api: httpx.Client, job_id: str) -> dict[str, Any]:
    def done() -> bool:
        return api.get(f"/api/v1/jobs/{job_id}").json()["status"] in (
            "succeeded", "failed", "cancelled")

    wait_until(done, timeout=10, step=0.05)
    job: dict[str, Any] = api.get(f"/api/v1/jobs/{job_id}").json()
    return job


@dataclass
class Settled:
    charged: Decimal
    balance: Decimal
    reserved: Decimal
    ledger_sum: Decimal
    prompt: int
    completion: int
    status: str


def settled(stack: Stack, job_id: str) -> Settled:
    """The job's charge, its account's wallet and ledger, its one call's request log."""
    with session_scope(stack.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.credits_charged is not None
        logs = session.execute(select(RequestLog).where(RequestLog.job_id == job_id)).scalars()
        (log,) = list(logs)
        account = session.execute(
            select(Account).join(ApiKey, ApiKey.account_id == Account.id)
            .where(ApiKey.id == job.key_id)
        ).scalar_one()
        ledger_sum = session.execute(
            select(func.sum(LedgerEntry.amount)).where(LedgerEntry.account_id == account.id)
        ).scalar_one()
        return Settled(job.credits_charged, account.balance, account.reserved, ledger_sum,
                       log.prompt_tokens, log.completion_tokens, log.status)


def assert_paid_only_produced(stack: Stack, job_id: str, model_id: str, key_credits: int,
                              full_tokens: int) -> None:
    got = settled(stack, job_id)
    assert got.status == "cancelled"
    assert 0 < got.completion < full_tokens / 4
    model = get_registry().get(model_id)
    # Exactly the produced tokens at the model's prices; no base fee for a cancelled job.
    assert got.charged == model.cost(got.prompt, got.completion) > 0
    assert got.balance == Decimal(key_credits) - got.charged == got.ledger_sum
    assert got.reserved == 0


def test_sse_disconnect_stops_the_provider_within_a_second(
    stack: Stack, mock: httpx.Client
) -> None:
    with account(stack, mock, SLOW) as api:
        with api.stream("POST", "/api/v1/chat", json=CHAT) as resp:
            job_id = resp.headers["X-Chorus-Job-Id"]
            chunks = 0
            for _seq, data in iter_sse(resp):
                chunks += '"event":"chunk"' in data
                if chunks == 10:
                    break
            assert stats(mock)["active_streams"] == 1
        left = time.monotonic()  # leaving the block closed the connection
        wait_until(lambda: stats(mock)["client_disconnects"].get("gpt-5.2") == 1, timeout=1.0)
        assert time.monotonic() - left < 1.0
        s = stats(mock)
        assert s["active_streams"] == 0 and s["completed"].get("gpt-5.2") is None
        job = final_job(api, job_id)
    assert job["status"] == "cancelled"
    assert_paid_only_produced(stack, job_id, "gpt-5.2", 1000, full_tokens=400)


def test_openai_sdk_stream_closed_early_stops_the_provider(
    stack: Stack, mock: httpx.Client
) -> None:
    key = stack.create_key(credits=1000)
    mock.post("/_mock/config", json={"model": "deepseek-chat", **SLOW})
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="deepseek-v3.2", messages=MSG, stream=True)  # type: ignore[call-overload]
    job_id = raw.headers["X-Chorus-Job-Id"]
    stream = raw.parse()
    for i, _chunk in enumerate(stream):
        if i == 8:
            break
    stream.close()
    left = time.monotonic()
    wait_until(lambda: stats(mock)["client_disconnects"].get("deepseek-chat") == 1, timeout=1.0)
    assert time.monotonic() - left < 1.0
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}) as api:
        assert final_job(api, job_id)["status"] == "cancelled"
    assert_paid_only_produced(stack, job_id, "deepseek-v3.2", 1000, full_tokens=400)


def test_keep_running_survives_the_disconnect(api: httpx.Client, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 10, "token_ms": 10,
                                     "tokens": 60})
    body = {"model": "gpt-5-mini", "messages": MSG, "stream": True, "keep_running": True}
    with api.stream("POST", "/api/v1/chat", json=body) as resp:
        job_id = resp.headers["X-Chorus-Job-Id"]
        for _ in zip(range(3), iter_sse(resp), strict=False):
            pass
    job = final_job(api, job_id)
    assert job["status"] == "succeeded"
    assert job["result"]["completion_tokens"] == 60
    s = stats(mock)
    assert s["completed"].get("gpt-5-mini") == 1
    assert not s["client_disconnects"].get("gpt-5-mini")
    # The finished answer is still there for a client that comes back.
    with api.stream("GET", f"/api/v1/jobs/{job_id}/events") as resp:
        events = [d for _s, d in iter_sse(resp)]
    assert events[-1] == "[DONE]" and '"status":"succeeded"' in events[-2]


def test_a_follower_leaving_does_not_cancel(api: httpx.Client, mock: httpx.Client) -> None:
    """Only the request that started a job owns it; a reader of its events may come and go."""
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 10, "token_ms": 10,
                                     "tokens": 50})
    body = {"model": "gpt-5-mini", "messages": MSG, "stream": True}
    with api.stream("POST", "/api/v1/chat", json=body) as owner:
        job_id = owner.headers["X-Chorus-Job-Id"]
        with api.stream("GET", f"/api/v1/jobs/{job_id}/events") as follower:
            next(iter_sse(follower))
        rest = [d for _s, d in iter_sse(owner)]
    assert '"status":"succeeded"' in rest[-2]
    assert final_job(api, job_id)["status"] == "succeeded"
    assert not stats(mock)["client_disconnects"].get("gpt-5-mini")



def assert_paid_for_the_prompt_only(stack: Stack, job_id: str, model_id: str,
                                    key_credits: int) -> None:
    got = settled(stack, job_id)
    assert got.status == "cancelled" and got.completion == 0
    assert got.charged == get_registry().get(model_id).cost(got.prompt, 0)
    assert got.balance == Decimal(key_credits) - got.charged == got.ledger_sum
    assert got.reserved == 0


def test_leaving_before_the_first_token_stops_the_provider(
    stack: Stack, mock: httpx.Client
) -> None:
    with account(stack, mock, THINKING) as api:
        with api.stream("POST", "/api/v1/chat", json=CHAT) as resp:
            job_id = resp.headers["X-Chorus-Job-Id"]
            wait_until(lambda: stats(mock)["active_streams"] == 1, timeout=2.0)
        # Nothing more is written to this client before the first token: the API sees it
        # leave within a second of silence, the worker within a quarter second more.
        took = wait_until(
            lambda: stats(mock)["client_disconnects"].get("gpt-5.2") == 1, timeout=3.0)
        assert took < 3.0
        assert stats(mock)["active_streams"] == 0
        assert final_job(api, job_id)["status"] == "cancelled"
    assert_paid_for_the_prompt_only(stack, job_id, "gpt-5.2", 1000)


def test_a_cancel_stops_a_call_waiting_for_its_first_token(
    stack: Stack, mock: httpx.Client
) -> None:
    with account(stack, mock, THINKING) as api:
        with api.stream("POST", "/api/v1/chat", json=CHAT) as resp:
            job_id = resp.headers["X-Chorus-Job-Id"]
            wait_until(lambda: stats(mock)["active_streams"] == 1, timeout=2.0)
            asked = time.monotonic()
            assert api.delete(f"/api/v1/jobs/{job_id}").status_code == 200
            events = [d for _s, d in iter_sse(resp)]
            ended = time.monotonic() - asked
        assert events[-1] == "[DONE]" and '"status":"cancelled"' in events[-2]
        assert ended < 2.0, f"the stream ended {ended:.2f} s after the cancel"
        assert stats(mock)["client_disconnects"].get("gpt-5.2") == 1
    assert_paid_for_the_prompt_only(stack, job_id, "gpt-5.2", 1000)
