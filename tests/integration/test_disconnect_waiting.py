"""A client that gives up on a non-streamed answer (its read timeout, say) stops the job
as a stream's client does: cancelled, paid only for the tokens produced; unless it asked
the job to keep running, or sent an Idempotency-Key, whose retry then gets the answer."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.keys import hash_key
from shared.tables import ApiKey, Job
from tests.integration.test_disconnect import (
    MSG,
    SLOW,
    account,
    assert_paid_only_produced,
    final_job,
    settled,
    stats,
    wait_until,
)
from tests.stack import Stack

BODY = {"model": "gpt-5.2", "messages": MSG}


def only_job(stack: Stack, api: httpx.Client) -> str:
    """The id of the one job of the client's account (its answer never came back)."""
    key = api.headers["Authorization"].removeprefix("Bearer ")

    def stored() -> bool:
        return job_ids() != []

    def job_ids() -> list[str]:
        with session_scope(stack.database_url) as s:
            return list(s.execute(
                select(Job.id).join(ApiKey, ApiKey.id == Job.key_id)
                .where(ApiKey.key_hash == hash_key(key))).scalars())

    wait_until(stored, timeout=5)
    (job_id,) = job_ids()
    return job_id


def give_up_after(api: httpx.Client, seconds: float, path: str = "/api/v1/chat",
                  **kw: Any) -> float:
    """Post and give up waiting after ``seconds``; when the connection was closed."""
    with pytest.raises(httpx.ReadTimeout):
        api.post(path, timeout=httpx.Timeout(10, read=seconds), **kw)
    return time.monotonic()


def test_a_client_that_stops_waiting_cancels_the_job(stack: Stack, mock: httpx.Client) -> None:
    with account(stack, mock, SLOW) as api:
        left = give_up_after(api, 1.5, json=BODY)
        wait_until(lambda: stats(mock)["client_disconnects"].get("gpt-5.2") == 1, timeout=2.0)
        # Noticed at the next look at the socket (every half second), then the stopper.
        assert time.monotonic() - left < 1.5
        assert stats(mock)["completed"].get("gpt-5.2") is None
        job_id = only_job(stack, api)
        assert final_job(api, job_id)["status"] == "cancelled"
    assert_paid_only_produced(stack, job_id, "gpt-5.2", 1000, full_tokens=400)


def test_an_openai_sdk_client_that_times_out_cancels_the_job(
    stack: Stack, mock: httpx.Client
) -> None:
    with account(stack, mock, SLOW) as api:
        key = api.headers["Authorization"].removeprefix("Bearer ")
        client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0,
                               timeout=1.5)
        ask: dict[str, Any] = {"model": "gpt-5.2", "messages": MSG}
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(**ask)
        wait_until(lambda: stats(mock)["client_disconnects"].get("gpt-5.2") == 1, timeout=2.0)
        job_id = only_job(stack, api)
        assert final_job(api, job_id)["status"] == "cancelled"
    assert_paid_only_produced(stack, job_id, "gpt-5.2", 1000, full_tokens=400)


QUICK = {"ttft_ms": 10, "token_ms": 30, "tokens": 60}  # about 2 s


def test_keep_running_finishes_without_its_client(stack: Stack, mock: httpx.Client) -> None:
    with account(stack, mock, QUICK) as api:
        give_up_after(api, 0.5, json={**BODY, "keep_running": True})
        job_id = only_job(stack, api)
        job = final_job(api, job_id)
    assert job["status"] == "succeeded" and job["result"]["completion_tokens"] == 60
    assert not stats(mock)["client_disconnects"].get("gpt-5.2")
    assert settled(stack, job_id).completion == 60


def test_a_keyed_request_runs_on_and_its_retry_gets_the_answer(
    stack: Stack, mock: httpx.Client
) -> None:
    """The case keys are for: a client times out and retries; one job, paid once."""
    with account(stack, mock, QUICK) as api:
        headers = {"Idempotency-Key": "order-17"}
        give_up_after(api, 0.5, json=BODY, headers=headers)
        retry = api.post("/api/v1/chat", json=BODY, headers=headers)
        assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true"
        job_id = only_job(stack, api)
        assert retry.json()["job_id"] == job_id and retry.json()["status"] == "succeeded"
        assert retry.json()["completion_tokens"] == 60
    assert not stats(mock)["client_disconnects"].get("gpt-5.2")
    got = settled(stack, job_id)
    assert got.charged == Decimal(str(retry.json()["credits_charged"])) > 0
    assert got.balance == 1000 - got.charged == got.ledger_sum and got.reserved == 0
