"""What a worker's publisher remembers of each job, to say it again if Redis loses it.

Per job: the epoch of the replay list it last wrote to (see ``shared.events``) and, per
model call, the text and tool-call fragments it has published so far and the call's end
(its ``done`` chunk or ``error`` event). When the publisher finds the list made again
(its events lost with Redis), the new list starts with a ``retry`` event, at which a
client drops every call's partial text; ``catch_up`` is what restores this process's
calls after it: one chunk per call with all its text so far, then its end if it ended.
So the text a client has after its last ``retry`` is each call's whole text.

A job is forgotten when this process writes its final event, or once it has been quiet
here for ``idle_s`` (every call ended: ``ended_idle_s``), so a pipeline's calls, whose
final event another process writes, are not kept for the life of the process.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared import events

# Fields of a chunk or error event that are its content; the rest (model, role, layer,
# sample, step, attempt...) tell which call it belongs to.
_CONTENT = frozenset({
    "event", "delta", "done", "latency_ms", "content_length", "tool_calls", "ttft_ms",
    "prompt_tokens", "completion_tokens", "tokens_per_second", "cost", "finish_reason",
    "full_content", "usage_estimated", "error", "retrying", "resent",
})


def _call_of(event: dict[str, Any]) -> frozenset[tuple[str, Any]] | None:
    """The call a chunk or error event belongs to; None for the job's other events."""
    if event.get("event") not in ("chunk", "error") or "model" not in event:
        return None
    try:
        return frozenset((k, v) for k, v in event.items() if k not in _CONTENT)
    except TypeError:  # a tag that is not hashable: not a call's event of ours
        return None


@dataclass
class _Call:
    parts: list[str] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] | None = None  # its latest text chunk: the shape of the catch-up
    end: dict[str, Any] | None = None  # its done chunk or error event

    def catch_up(self) -> list[dict[str, Any]]:
        """Marked ``resent``: no event of a list made again is one of the lost list."""
        out: list[dict[str, Any]] = []
        if self.last is not None:
            chunk = {**self.last, "delta": "".join(self.parts)}
            chunk.pop("tool_calls", None)
            if self.tools:
                chunk["tool_calls"] = list(self.tools)
                # Keep the key order of an ordinary chunk: delta, tool_calls, done, ...
                for k in ("done", "latency_ms", "content_length"):
                    if k in chunk:
                        chunk[k] = chunk.pop(k)
            out.append({**chunk, "resent": True})
        if self.end is not None:
            out.append({**self.end, "resent": True})
        return out


@dataclass
class _Job:
    epoch: str = ""
    base: int = 0
    calls: dict[frozenset[tuple[str, Any]], _Call] = field(default_factory=dict)
    seen_at: float = 0.0

    @property
    def ended(self) -> bool:
        return bool(self.calls) and all(c.end is not None for c in self.calls.values())


class JobLogs:
    """The publisher's memory of its jobs (one per publisher, used from one greenlet at a
    time: the publisher's writes never overlap)."""

    def __init__(self, idle_s: float, ended_idle_s: float = 60.0) -> None:
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._idle_s = idle_s
        self._ended_idle_s = min(ended_idle_s, idle_s)
        self._swept = 0.0

    def epoch(self, job_id: str) -> tuple[str, int]:
        """The epoch of the list this process last wrote the job's events to, and its
        base ('' and 0 if it has written none: it cannot tell a new job from a lost
        list)."""
        job = self._jobs.get(job_id)
        return ("", 0) if job is None else (job.epoch, job.base)

    def written(self, job_id: str, epoch: str | None, items: Iterable[dict[str, Any]]) -> None:
        """``items`` are in the job's list, whose epoch is ``epoch`` (None: the one
        last written to)."""
        now = time.monotonic()
        job = self._jobs.get(job_id)
        if job is None:
            job = self._jobs[job_id] = _Job()
        else:
            self._jobs.move_to_end(job_id)  # the most recently written last
        job.seen_at = now
        if epoch is not None:
            job.epoch, job.base = epoch, events.epoch_base(epoch)
        for event in items:
            if event.get("final"):
                self.forget(job_id)
                break
            key = _call_of(event)
            if key is None:
                continue
            call = job.calls.get(key)
            if call is None:
                call = job.calls[key] = _Call()
            if event.get("event") == "error" or event.get("done"):
                call.end = event
                continue
            call.end = None  # a call that goes on after an error (a judge's re-ask)
            call.last = event
            if event.get("delta"):
                call.parts.append(event["delta"])
            if event.get("tool_calls"):
                call.tools.extend(event["tool_calls"])
        self._expire(now)

    def catch_up(self, job_id: str, epoch: str) -> list[dict[str, Any]]:
        """The job's list was made again (its epoch is now ``epoch``): the events that
        say again what this process's calls have said so far, in the order they began."""
        job = self._jobs.get(job_id)
        if job is None:
            return []
        job.epoch, job.base = epoch, events.epoch_base(epoch)
        return [e for call in job.calls.values() for e in call.catch_up()]

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._jobs)

    def _expire(self, now: float) -> None:
        # At most once a second, oldest first: stop at the first job still worth keeping
        # (an ended one may sit behind a running one until that goes quiet; the bound is
        # ``idle_s``).
        if now - self._swept < 1.0:
            return
        self._swept = now
        while self._jobs:
            job_id, job = next(iter(self._jobs.items()))
            quiet = now - job.seen_at
            if quiet < self._ended_idle_s or (quiet < self._idle_s and not job.ended):
                return
            del self._jobs[job_id]
