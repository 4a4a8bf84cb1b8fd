"""A fresh chat starts while its claim runs: its first event waits for the claim, a job
the claim finds ended publishes and finishes nothing, and a failed claim retries the task.

The claim, the handler and the publisher are stand-ins; what is tested is the ordering
in ``workers.jobs`` around them."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import gevent
import pytest
from sqlalchemy.exc import OperationalError

from workers import jobs
from workers.calls import JobContext
from workers.jobs import JobSpec, Known, Outcome

TICKET = json.dumps({"kind": "chat", "account_id": 7, "byok": [], "zero_retention": False,
                     "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}})


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, job_id: str, event: dict[str, Any], drop: Any = ()) -> None:
        self.events.append(event)

    def flush(self) -> None:
        return None


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    w = SimpleNamespace(rt=SimpleNamespace(publisher=Recorder()), finished=[], order=[],
                        claim_result="spec")

    def claim(job_id: str, rt: Any, known: Known) -> JobSpec | None:
        gevent.sleep(0.02)  # the database round trip
        w.order.append("claimed")
        if w.claim_result == "error":
            raise OperationalError("UPDATE jobs", {}, Exception("server closed"))
        return jobs.ticket_spec(job_id, known) if w.claim_result == "spec" else None

    def chat(ctx: JobContext, spec: JobSpec) -> Outcome:
        w.order.append("call started")
        ctx.publish({"event": "chunk", "delta": "hi"})
        w.order.append("published")
        return Outcome("succeeded")

    monkeypatch.setattr(jobs, "claim", claim)
    monkeypatch.setitem(jobs.HANDLERS, "chat", chat)
    monkeypatch.setattr(jobs, "finish", lambda spec, outcome, rt, lease: w.finished.append(outcome))
    return w


def run(w: SimpleNamespace, known: Known | None = None) -> None:
    jobs._run_leased("job-1", w.rt, known or Known(False, False, TICKET.encode()),
                     jobs.Lease(None, "job-1"))  # type: ignore[arg-type]


def test_the_call_starts_before_the_claim_and_publishes_after_it(world: SimpleNamespace) -> None:
    run(world)
    assert world.order == ["call started", "claimed", "published"]
    assert world.rt.publisher.events == [{"event": "chunk", "delta": "hi"}]
    assert [o.status for o in world.finished] == ["succeeded"]


def test_a_job_the_claim_finds_ended_publishes_and_finishes_nothing(
        world: SimpleNamespace) -> None:
    world.claim_result = None
    run(world)
    assert world.rt.publisher.events == []
    assert world.finished == []


def test_a_failed_claim_fails_the_task_so_it_is_retried(world: SimpleNamespace) -> None:
    world.claim_result = "error"
    with pytest.raises(OperationalError):
        run(world)
    assert world.rt.publisher.events == [] and world.finished == []


def test_a_job_with_events_already_claims_first(world: SimpleNamespace) -> None:
    run(world, Known(True, False, TICKET.encode()))
    assert world.order == ["claimed", "call started", "published"]
