"""Idempotency-Key end to end: a retry gets the first request's job (its events from the
start, or its final answer), never a second job or charge; another body is a 409; a race
on one key makes one job; keys are per account; batches and WebSocket jobs too; a retry
still gets its answer after the first API process died or the replay list expired."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from typing import Any

import httpx
import openai
import pytest
import redis
import websocket
from sqlalchemy import func, select

from shared.db import session_scope
from shared.keys import hash_key
from shared.tables import Account, ApiKey, Batch, IdempotencyKey, Job, LedgerEntry
from tests.sse import iter_sse, read_stream
from tests.stack import Stack

MSG = [{"role": "user", "content": "Name three rivers of Europe."}]
CHAT = {"model": "gpt-5-mini", "messages": MSG}
REPLAYED = "Idempotent-Replayed"


@dataclass
class Acct:
    key: str
    api: httpx.Client
    id: int


@pytest.fixture
def acct(stack: Stack, mock: httpx.Client) -> Iterator[Acct]:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 5, "token_ms": 5,
                                     "tokens": 30})
    yield new_account(stack)


def new_account(stack: Stack) -> Acct:
    key = stack.create_key(credits=1000)
    with session_scope(stack.database_url) as s:
        aid = s.execute(select(ApiKey.account_id)
                        .where(ApiKey.key_hash == hash_key(key))).scalar_one()
    api = httpx.Client(base_url=stack.url, timeout=30,
                       headers={"Authorization": f"Bearer {key}"})
    return Acct(key, api, aid)


def compact(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


@dataclass
class Books:
    jobs: int
    ledger: Counter[str]
    balance: Decimal
    reserved: Decimal
    ledger_sum: Decimal


def books(stack: Stack, account_id: int) -> Books:
    """The account's jobs, its ledger rows by kind and its wallet."""
    with session_scope(stack.database_url) as s:
        jobs = s.execute(select(func.count()).select_from(Job)
                         .where(Job.account_id == account_id)).scalar_one()
        kinds = Counter(s.execute(select(LedgerEntry.kind)
                                  .where(LedgerEntry.account_id == account_id)).scalars())
        total = s.execute(select(func.sum(LedgerEntry.amount))
                          .where(LedgerEntry.account_id == account_id)).scalar_one()
        account = s.get(Account, account_id)
        assert account is not None
        return Books(jobs, kinds, account.balance, account.reserved, total)


def settled_once(stack: Stack, account_id: int, timeout: float = 15) -> Books:
    """The account's books once its one job has settled: one reserve, one settle."""
    deadline = time.monotonic() + timeout
    while True:
        b = books(stack, account_id)
        if b.ledger["settle"] >= 1:
            break
        assert time.monotonic() < deadline, b
        time.sleep(0.05)
    assert b.jobs == 1
    assert b.ledger == Counter({"grant": 1, "reserve": 1, "settle": 1})
    assert b.reserved == 0 and b.balance == b.ledger_sum
    return b


def test_a_retried_answer_is_the_first_ones(stack: Stack, acct: Acct) -> None:
    first = acct.api.post("/api/v1/chat", json=CHAT, headers=keyed("retry-1"))
    assert first.status_code == 200, first.text
    assert REPLAYED not in first.headers
    again = acct.api.post("/api/v1/chat", json=CHAT, headers=keyed("retry-1"))
    assert again.status_code == 200, again.text
    assert again.headers[REPLAYED] == "true"
    job_id = first.json()["job_id"]
    assert first.headers["X-Chorus-Job-Id"] == again.headers["X-Chorus-Job-Id"] == job_id
    assert again.json()["full_content"] == first.json()["full_content"] != ""
    assert again.json()["credits_charged"] == first.json()["credits_charged"] > 0
    settled_once(stack, acct.id)


def test_a_streamed_retry_replays_the_events_from_the_start(
    stack: Stack, acct: Acct, mock: httpx.Client
) -> None:
    # Slow enough that the retry comes while the first stream is still going.
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 5, "token_ms": 30,
                                     "tokens": 40})
    body = {**CHAT, "stream": True}
    with acct.api.stream("POST", "/api/v1/chat", json=body, headers=keyed("s-1")) as one:
        job_id = one.headers["X-Chorus-Job-Id"]
        first = iter_sse(one)
        head = list(islice(first, 5))
        with acct.api.stream("POST", "/api/v1/chat", json=body, headers=keyed("s-1")) as two:
            assert two.headers[REPLAYED] == "true"
            assert two.headers["X-Chorus-Job-Id"] == job_id
            replay = read_stream(two)
        original = head + list(first)
    assert replay.done and replay.final["status"] == "succeeded"
    assert replay.ids == list(range(1, len(replay.ids) + 1))
    # Exactly the events the first request streamed, from the first one.
    assert original == [*zip(replay.ids, map(compact, replay.events), strict=True),
                        (None, "[DONE]")]
    assert replay.text != ""
    settled_once(stack, acct.id)
    # After the job ended, a retry still reads it whole.
    with acct.api.stream("POST", "/api/v1/chat", json=body, headers=keyed("s-1")) as three:
        late = read_stream(three)
    assert late.ids == replay.ids and late.text == replay.text
    assert books(stack, acct.id).jobs == 1


def test_the_openai_sdk_retries_with_a_key_in_extra_headers(
    stack: Stack, acct: Acct
) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=acct.key, max_retries=0)
    ask: dict[str, Any] = {"model": "gpt-5-mini", "messages": MSG,
                           "extra_headers": keyed("sdk-1")}
    first = client.chat.completions.with_raw_response.create(**ask)
    again = client.chat.completions.with_raw_response.create(**ask)
    assert again.headers[REPLAYED] == "true"
    a, b = first.parse(), again.parse()
    assert a.id == b.id and a.choices[0].message.content == b.choices[0].message.content
    settled_once(stack, acct.id)

    streamed: dict[str, Any] = {**ask, "stream": True, "extra_headers": keyed("sdk-2")}
    texts = []
    for _ in range(2):
        chunks = list(client.chat.completions.create(**streamed))
        assert len({c.id for c in chunks}) == 1
        texts.append((chunks[0].id, "".join(c.choices[0].delta.content or ""
                                            for c in chunks if c.choices)))
    assert texts[0] == texts[1] and texts[0][1]
    assert books(stack, acct.id).jobs == 2


def test_the_same_key_with_another_body_is_a_409_and_creates_nothing(
    stack: Stack, acct: Acct
) -> None:
    assert acct.api.post("/api/v1/chat", json=CHAT, headers=keyed("c-1")).status_code == 200
    before = settled_once(stack, acct.id)
    other = {**CHAT, "temperature": 0.3}
    for path, body in (("/api/v1/chat", other), ("/api/v1/chat", {**CHAT, "stream": True}),
                       ("/api/v1/compare", {"models": ["gpt-5-mini", "gpt-5.2"],
                                            "messages": MSG})):
        r = acct.api.post(path, json=body, headers=keyed("c-1"))
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "idempotency_conflict"
        assert r.json()["error"]["param"] == "Idempotency-Key"
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=acct.key, max_retries=0)
    ask: dict[str, Any] = {"model": "gpt-5-mini", "messages": MSG,
                           "extra_headers": keyed("c-1")}
    with pytest.raises(openai.ConflictError):
        client.chat.completions.create(**ask)
    assert books(stack, acct.id) == before


@pytest.mark.parametrize("key", [b"", b"x" * 256, "caf\u00e9".encode()])
def test_a_malformed_key_is_a_400_and_creates_nothing(
    stack: Stack, acct: Acct, key: bytes
) -> None:
    r = acct.api.post("/api/v1/chat", json=CHAT, headers={b"Idempotency-Key": key})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "Idempotency-Key"
    assert books(stack, acct.id).jobs == 0


def test_requests_racing_on_one_key_make_one_job(stack: Stack, acct: Acct) -> None:
    def post(_: int) -> httpx.Response:
        return acct.api.post("/api/v1/chat", json=CHAT, headers=keyed("race-1"))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    ok = [r for r in answers if r.status_code == 200]
    # The loser of a race either replays or, before the winner's job is stored, is told
    # to retry; never a second job.
    assert all(r.status_code == 200 or r.json()["error"]["code"] == "idempotency_in_progress"
               for r in answers), [r.text for r in answers]
    assert ok and len({r.headers["X-Chorus-Job-Id"] for r in ok}) == 1
    assert sum(REPLAYED not in r.headers for r in ok) <= 1
    settled_once(stack, acct.id)


def test_another_accounts_key_does_not_collide(stack: Stack, acct: Acct) -> None:
    other = new_account(stack)
    with other.api:
        one = acct.api.post("/api/v1/chat", json=CHAT, headers=keyed("same-name"))
        two = other.api.post("/api/v1/chat", json=CHAT, headers=keyed("same-name"))
    assert one.status_code == two.status_code == 200
    assert REPLAYED not in two.headers
    assert one.headers["X-Chorus-Job-Id"] != two.headers["X-Chorus-Job-Id"]
    settled_once(stack, acct.id)
    settled_once(stack, other.id)


def test_a_retried_batch_is_the_first_one(stack: Stack, acct: Acct) -> None:
    lines = [{"custom_id": f"q{i}", "endpoint": "chat", "body": CHAT} for i in range(3)]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    jsonl = {"Content-Type": "application/jsonl", **keyed("batch-1")}
    first = acct.api.post("/api/v1/batches", content=body, headers=jsonl)
    assert first.status_code == 201, first.text
    again = acct.api.post("/api/v1/batches", content=body, headers=jsonl)
    assert again.status_code == 200 and again.headers[REPLAYED] == "true"
    assert again.json()["id"] == first.json()["id"]
    # The same lines as a JSON body are the same batch; other lines are another request.
    as_json = acct.api.post("/api/v1/batches", json={"lines": lines}, headers=keyed("batch-1"))
    assert as_json.status_code == 200 and as_json.json()["id"] == first.json()["id"]
    changed = acct.api.post("/api/v1/batches", content=body[:-1] + b" \n" + body[-1:],
                            headers=jsonl)
    assert changed.status_code == 200  # spacing is not a change
    fewer = acct.api.post("/api/v1/batches", json={"lines": lines[:2]},
                          headers=keyed("batch-1"))
    assert fewer.status_code == 409 and fewer.json()["error"]["code"] == "idempotency_conflict"
    with session_scope(stack.database_url) as s:
        batches = s.execute(select(func.count()).select_from(Batch)
                            .where(Batch.account_id == acct.id)).scalar_one()
        assert batches == 1
        assert s.execute(select(func.count()).select_from(IdempotencyKey)
                         .where(IdempotencyKey.account_id == acct.id)).scalar_one() == 1
    assert books(stack, acct.id).jobs == 3


def test_a_retry_after_the_replay_list_is_gone_gets_the_final_from_the_database(
    stack: Stack, acct: Acct
) -> None:
    first = acct.api.post("/api/v1/chat", json=CHAT, headers=keyed("gone-1"))
    assert first.status_code == 200
    job_id = first.headers["X-Chorus-Job-Id"]
    # As after the list's ten minutes, or an emptied Redis.
    redis.Redis.from_url(stack.redis_url).delete(f"chorus:job:{job_id}:events")
    again = acct.api.post("/api/v1/chat", json=CHAT, headers=keyed("gone-1"))
    assert again.status_code == 200 and again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    streamed = {**CHAT, "stream": True}
    acct.api.post("/api/v1/chat", json=streamed, headers=keyed("gone-2")).read()
    (job2,) = set(job_ids(stack, acct.id)) - {job_id}
    redis.Redis.from_url(stack.redis_url).delete(f"chorus:job:{job2}:events")
    with acct.api.stream("POST", "/api/v1/chat", json=streamed, headers=keyed("gone-2")) as r:
        events = list(iter_sse(r))
    # The stream still ends: the final event, from the job's row, then [DONE].
    assert [e for _i, e in events][-1] == "[DONE]" and len(events) == 2
    final = json.loads(events[0][1])
    assert final["final"] and final["job_id"] == job2 and final["status"] == "succeeded"
    assert books(stack, acct.id).jobs == 2


def job_ids(stack: Stack, account_id: int) -> list[str]:
    with session_scope(stack.database_url) as s:
        return list(s.execute(select(Job.id).where(Job.account_id == account_id)).scalars())


def test_a_retry_on_another_api_process_after_the_first_died_gets_the_answer(
    stack: Stack, acct: Acct, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 5, "token_ms": 30,
                                     "tokens": 60})
    doomed = stack.start_api("web-doomed")
    with httpx.Client(base_url=doomed, timeout=30, headers=acct.api.headers) as client, \
            ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.post, "/api/v1/chat", json=CHAT,
                              headers=keyed("crash-1"))

        def streaming() -> bool:
            data: dict[str, Any] = mock.get("/_mock/stats").json()
            return bool(data["active_streams"])

        deadline = time.monotonic() + 10
        while not streaming():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        stack.stop_proc("web-doomed", signal.SIGKILL)
        with pytest.raises(httpx.TransportError):
            waiting.result()
    retry = acct.api.post("/api/v1/chat", json=CHAT, headers=keyed("crash-1"))
    assert retry.status_code == 200 and retry.headers[REPLAYED] == "true"
    assert retry.json()["status"] == "succeeded" and retry.json()["completion_tokens"] == 60
    settled_once(stack, acct.id)


def test_a_websocket_job_retried_on_a_new_socket_replays(
    stack: Stack, acct: Acct, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 5, "token_ms": 30,
                                     "tokens": 40})
    url = stack.url.replace("http://", "ws://") + "/api/v1/ws"
    msg = {"type": "chat", "id": "q", "idempotency_key": "ws-1", **CHAT}

    def connect() -> websocket.WebSocket:
        conn = websocket.create_connection(url, timeout=15,
                                           header=[f"Authorization: Bearer {acct.key}"])
        assert json.loads(conn.recv()) == {"type": "ready"}
        return conn

    first = connect()
    first.send(json.dumps(msg))
    accepted = json.loads(first.recv())
    assert accepted["type"] == "accepted" and "replayed" not in accepted
    assert json.loads(first.recv())["type"] == "event"
    first.close()  # the socket drops mid-answer: with a key, the job runs on
    second = connect()
    second.send(json.dumps(msg))
    again = json.loads(second.recv())
    assert again == {"type": "accepted", "id": "q", "job_id": accepted["job_id"],
                     "replayed": True}
    seen = []
    while (m := json.loads(second.recv()))["type"] != "done":
        seen.append(m)
    second.close()
    assert [m["seq"] for m in seen] == list(range(1, len(seen) + 1))
    assert seen[-1]["data"]["status"] == "succeeded"
    assert seen[-1]["data"]["completion_tokens"] == 40
    # The same key over HTTP is the same request of the same kind.
    over_http = acct.api.post("/api/v1/chat", json=CHAT, headers=keyed("ws-1"))
    assert over_http.headers["X-Chorus-Job-Id"] == accepted["job_id"]
    settled_once(stack, acct.id)
    bad = connect()
    bad.send(json.dumps({**msg, "id": "r", "idempotency_key": 7}))
    error = json.loads(bad.recv())
    bad.close()
    assert error["type"] == "error" and error["error"]["param"] == "idempotency_key"
