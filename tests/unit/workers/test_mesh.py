"""The failover loop without a broker: real mock provider over HTTP, real Redis, no Celery."""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from shared import events
from shared.breaker import Breaker, BreakerConfig, model_keys
from shared.registry import Registry, parse_registry
from shared.settings import PACKAGE_DIR, Settings
from workers.breaking import BreakerOpen
from workers.calls import JobContext
from workers.mesh import (
    CONTINUE_PROMPT,
    RepeatGuard,
    continue_call,
    overlap,
    run_chain,
)
from workers.providers.base import ChatCall
from workers.runtime import Runtime

MSG = [{"role": "user", "content": "Tell me a story."}]
A, B, C = "gpt-5.2", "deepseek-v3.2", "claude-haiku-4.5"
UPSTREAM = {A: "gpt-5.2", B: "deepseek-chat", C: "claude-haiku-4-5"}
REPLY = "Once upon a time there was a small lighthouse keeper who loved storms."


@pytest.fixture(scope="module")
def redis_url(redis_db_url: str) -> str:
    return redis_db_url


@pytest.fixture(scope="module")
def runtime(redis_url: str, mock_url: str) -> Runtime:
    raw = tomllib.loads((PACKAGE_DIR / "models.toml").read_text())
    rt = Runtime(Settings(redis_url=redis_url, idle_timeout_s=2.0, connect_timeout_s=2.0))
    registry: Registry = parse_registry(raw, env={"CHORUS_MOCK_URL": mock_url})
    rt.__dict__["registry"] = registry
    return rt


@pytest.fixture
def breaker(runtime: Runtime) -> Iterator[Breaker]:
    b = Breaker(runtime.redis, BreakerConfig(failures=3, open_s=30, probe_s=30))
    yield b
    runtime.redis.delete(*[k for m in (A, B, C) for k in model_keys(m)])


@pytest.fixture
def ctx(runtime: Runtime) -> JobContext:
    return JobContext(job_id=str(uuid.uuid4()), account_id=1, runtime=runtime)


def published(ctx: JobContext) -> list[dict[str, Any]]:
    client: redis.Redis = ctx.runtime.redis
    return [json.loads(e) for e in client.lrange(events.events_key(ctx.job_id), 0, -1)]


def text_of(evs: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in evs if e["event"] == "chunk")


def routes(evs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["model"], e["status"]) for e in evs if e["event"] == "route"]


def configure(mock: httpx.Client, model: str, **kw: Any) -> None:
    r = mock.post("/_mock/config", json={"model": UPSTREAM[model], "ttft_ms": 5,
                                         "token_ms": 1, **kw})
    assert r.status_code == 200, r.text


def calls(mock: httpx.Client) -> dict[str, int]:
    stats: dict[str, int] = mock.get("/_mock/stats").json()["calls"]
    return {m: stats.get(UPSTREAM[m], 0) for m in (A, B, C)}


def test_overlap_finds_the_repeated_seam() -> None:
    prefix = "The quick brown fox jumps over"
    assert overlap(prefix, " over the lazy dog") == 0  # shorter than the minimum
    assert overlap(prefix, " fox jumps over the lazy dog") == len(" fox jumps over")
    assert overlap(prefix, prefix + " the lazy dog") == len(prefix)
    assert overlap(prefix, " the lazy dog") == 0


def test_repeat_guard_drops_a_restarted_answer() -> None:
    guard = RepeatGuard("The quick brown fox jumps")
    out = [guard.feed(t, False) for t in ["The", " quick", " brown", " fox", " jumps", " over"]]
    out.append(guard.feed(" the dog", True))
    assert "".join(out) == " over the dog"
    assert out[:5] == [""] * 5  # held back while it could still be a repeat


def test_repeat_guard_passes_a_clean_continuation_at_once() -> None:
    guard = RepeatGuard("The quick brown fox")
    assert guard.feed(" jumps", False) == " jumps"
    assert guard.feed(" over", False) == " over"
    short = RepeatGuard("The quick brown fox")
    # A short answer that happens to sit inside the prefix is released at the end.
    assert short.feed(" fox", False) == ""
    assert short.feed("", True) == " fox"


def test_continue_call_hands_over_the_partial_answer() -> None:
    call = ChatCall(messages=list(MSG), max_tokens=100, temperature=0.3)
    cont = continue_call(call, "Once upon a time")
    assert cont.messages[:-2] == MSG
    assert cont.messages[-2] == {"role": "assistant", "content": "Once upon a time"}
    assert cont.messages[-1] == {"role": "user", "content": CONTINUE_PROMPT}
    assert cont.max_tokens == 96 and cont.temperature == 0.3
    assert call.messages == MSG


def test_status_error_fails_over_and_is_recorded(ctx: JobContext, breaker: Breaker,
                                                 mock: httpx.Client) -> None:
    configure(mock, A, fault={"kind": "status", "status": 500})
    configure(mock, B, reply=REPLY)
    reg = ctx.runtime.registry
    run = run_chain(ctx, [reg.get(A), reg.get(B)], ChatCall(messages=MSG), breaker)
    evs = published(ctx)
    assert routes(evs) == [(A, "trying"), (A, "failed"), (B, "trying")]
    failed = next(e for e in evs if e["event"] == "route" and e["status"] == "failed")
    assert failed["reason"].startswith("upstream_server_error") and failed["retryable"]
    assert text_of(evs) == REPLY
    assert run.answered is not None and run.answered.model == B
    assert [a.status for a in run.attempts] == ["failed", "ok"]
    assert [c.model for c in run.calls] == [A, B]
    assert run.trace()["final_model"] == B
    assert breaker.state(A)["consecutive_failures"] == 1
    assert not any(e["event"] == "error" for e in evs)


def test_broken_stream_is_continued_by_the_fallback(ctx: JobContext, breaker: Breaker,
                                                    mock: httpx.Client) -> None:
    configure(mock, A, reply=REPLY, fault={"kind": "disconnect", "after_tokens": 4})
    configure(mock, C, reply=" lighthouse keeper who loved storms.")
    reg = ctx.runtime.registry
    run = run_chain(ctx, [reg.get(A), reg.get(C)], ChatCall(messages=MSG), breaker)
    evs = published(ctx)
    assert text_of(evs) == "Once upon a time lighthouse keeper who loved storms."
    final = next(e for e in evs if e["event"] == "chunk" and e["done"])
    assert final["model"] == C and final["full_content"] == text_of(evs)
    lengths = [e["content_length"] for e in evs if e["event"] == "chunk"]
    assert lengths == sorted(lengths) and lengths[-1] == len(text_of(evs))
    assert run.answered is not None and run.answered.prefix == "Once upon a time"
    sent = mock.get("/_mock/requests", params={"model": UPSTREAM[C], "limit": 1}).json()
    # The Anthropic wire format: the original turn, the partial answer, then the ask.
    texts = json.dumps(sent[-1]["body"]["messages"])
    assert "Once upon a time" in texts and "Continue it from exactly where it stopped" in texts


def test_fallback_that_restarts_the_answer_is_not_repeated(ctx: JobContext, breaker: Breaker,
                                                           mock: httpx.Client) -> None:
    configure(mock, A, reply=REPLY, fault={"kind": "disconnect", "after_tokens": 6})
    configure(mock, B, reply=REPLY)
    reg = ctx.runtime.registry
    run_chain(ctx, [reg.get(A), reg.get(B)], ChatCall(messages=MSG), breaker)
    evs = published(ctx)
    assert text_of(evs) == REPLY
    b_text = "".join(e["delta"] for e in evs if e["event"] == "chunk" and e["model"] == B)
    assert b_text == REPLY[len("Once upon a time there was"):]


def test_non_retryable_error_ends_the_chain(ctx: JobContext, breaker: Breaker,
                                            mock: httpx.Client) -> None:
    configure(mock, A, fault={"kind": "status", "status": 400})
    reg = ctx.runtime.registry
    run = run_chain(ctx, [reg.get(A), reg.get(B)], ChatCall(messages=MSG), breaker)
    assert run.answered is None and [a.status for a in run.attempts] == ["failed"]
    assert calls(mock)[B] == 0
    evs = published(ctx)
    assert evs[-1]["event"] == "error" and evs[-1]["model"] == A
    # A caller's mistake is not the model's failure.
    assert breaker.state(A)["consecutive_failures"] == 0


def test_open_breaker_is_skipped_without_a_call(ctx: JobContext, breaker: Breaker,
                                                mock: httpx.Client) -> None:
    for _ in range(3):
        breaker.record(A, "fail")
    configure(mock, B, reply=REPLY)
    reg = ctx.runtime.registry
    run = run_chain(ctx, [reg.get(A), reg.get(B)], ChatCall(messages=MSG), breaker)
    assert routes(published(ctx)) == [(A, "skipped"), (B, "trying")]
    assert calls(mock) == {A: 0, B: 1, C: 0}
    assert isinstance(run.calls[0].error, BreakerOpen) and run.calls[0].cost == 0
    assert run.attempts[0].reason.startswith("circuit open")


def test_a_lone_model_is_called_even_with_its_breaker_open(
    ctx: JobContext, breaker: Breaker, mock: httpx.Client
) -> None:
    for _ in range(3):
        breaker.record(A, "fail")
    configure(mock, A, reply=REPLY)
    run = run_chain(ctx, [ctx.runtime.registry.get(A)], ChatCall(messages=MSG), breaker,
                    announce=False)
    assert run.answered is not None and calls(mock)[A] == 1
    assert routes(published(ctx)) == []


def test_every_model_failing_ends_with_one_error_event(ctx: JobContext, breaker: Breaker,
                                                       mock: httpx.Client) -> None:
    configure(mock, A, fault={"kind": "status", "status": 503})
    configure(mock, B, fault={"kind": "status", "status": 429, "retry_after": 7})
    reg = ctx.runtime.registry
    run = run_chain(ctx, [reg.get(A), reg.get(B)], ChatCall(messages=MSG), breaker)
    evs = published(ctx)
    assert run.answered is None
    assert [e["event"] for e in evs].count("error") == 1
    assert evs[-1]["error"]["code"] == "upstream_rate_limited"
    assert [a.status for a in run.attempts] == ["failed", "failed"]


def test_two_breaks_in_a_row_still_make_one_answer(ctx: JobContext, breaker: Breaker,
                                                   mock: httpx.Client) -> None:
    configure(mock, A, reply="One two three four five", fault={"kind": "disconnect",
                                                               "after_tokens": 2})
    configure(mock, B, reply=" three four five six", fault={"kind": "disconnect",
                                                            "after_tokens": 2})
    configure(mock, C, reply=" five six seven.")
    reg = ctx.runtime.registry
    run = run_chain(ctx, [reg.get(A), reg.get(B), reg.get(C)], ChatCall(messages=MSG), breaker)
    evs = published(ctx)
    assert text_of(evs) == "One two three four five six seven."
    assert [a.status for a in run.attempts] == ["failed", "failed", "ok"]
    sent = mock.get("/_mock/requests", params={"model": UPSTREAM[C], "limit": 1}).json()
    assert '"One two three four"' in json.dumps(sent[-1]["body"]["messages"])
