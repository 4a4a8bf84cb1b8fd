"""What a publisher remembers of its jobs: each call's text so far in order, and for how
long (the clock is faked: it is what the memory is measured against)."""

from __future__ import annotations

from typing import Any

import pytest

from workers import resync
from workers.resync import JobLogs


def chunk(model: str, delta: str, **tags: Any) -> dict[str, Any]:
    return {"event": "chunk", "model": model, **tags, "delta": delta, "done": False,
            "latency_ms": 1.0, "content_length": len(delta)}


def test_catch_up_says_each_call_again_in_the_order_they_began() -> None:
    logs = JobLogs(idle_s=3600)
    frag = {"index": 0, "id": "c1", "name": "f", "arguments": "{}"}
    logs.written("j", "0:x", [
        {"event": "route", "model": "a", "status": "trying"},
        chunk("a", "par"), chunk("a", "tial"),
        {"event": "error", "model": "a", "error": {"code": "server_error"}},
        chunk("b", "", tool_calls=[frag]), chunk("b", "more", sample=1),
        chunk("b", "text"),
    ])
    assert logs.epoch("j") == ("0:x", 0)
    again = logs.catch_up("j", "5000000:y")
    assert logs.epoch("j") == ("5000000:y", 5000000)
    assert [(e["event"], e.get("model"), e.get("delta"), e.get("sample")) for e in again] == [
        ("chunk", "a", "partial", None), ("error", "a", None, None),
        ("chunk", "b", "text", None), ("chunk", "b", "more", 1)]
    assert again[2]["tool_calls"] == [frag] and all(e["resent"] for e in again)
    # A job this process never wrote to has nothing to say again.
    assert logs.catch_up("other", "1:z") == [] and logs.epoch("other") == ("", 0)


def test_jobs_are_forgotten_at_their_final_or_once_quiet(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(resync.time, "monotonic", lambda: now[0])
    logs = JobLogs(idle_s=600, ended_idle_s=60)
    logs.written("final", "0:a", [chunk("m", "x"), {"final": True, "event": "done"}])
    logs.written("ended", "0:b", [chunk("m", "x"),
                                  {"event": "chunk", "model": "m", "delta": "", "done": True}])
    logs.written("running", "0:c", [chunk("m", "x")])
    assert len(logs) == 2  # the final's job is gone at once
    now[0] += 61
    logs.written("other", "0:d", [chunk("m", "y")])
    assert logs.epoch("ended") == ("", 0) and logs.epoch("running") == ("0:c", 0)
    now[0] += 600
    logs.written("other", "0:d", [chunk("m", "z")])
    assert logs.epoch("running") == ("", 0) and len(logs) == 1
