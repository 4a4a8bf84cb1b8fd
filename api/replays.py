"""What a request repeating an ``Idempotency-Key`` gets: its first request's job, as
events from the start (a stream) or as its final result (waited for while it runs)."""

from __future__ import annotations

import json
from typing import Any

import redis
from flask import Response, current_app, stream_with_context

from api.errors import unavailable
from api.idempotency import mark_replayed
from api.owned import load_job
from api.streaming import SSE_HEADERS, Frames, chorus_frames, sse_response, wait_final
from shared import events, finals
from shared.tables import Job


def _redis() -> redis.Redis:
    client: redis.Redis = current_app.extensions["chorus.redis"]
    return client


def ended_final(job: Job) -> dict[str, Any] | None:
    """An ended job's final event: the last of its replay list while the list lasts (it
    has the answer even for a zero-retention account), else rebuilt from its row. None
    while the job runs."""
    if job.status not in finals.FINAL_STATUSES:
        return None
    try:
        last = _redis().lindex(events.events_key(job.id), -1)
    except redis.RedisError as exc:
        raise unavailable("redis") from exc
    if last is not None:
        text = last.decode() if isinstance(last, bytes) else last
        if events.is_final(text):
            final: dict[str, Any] = json.loads(text)
            return final
    return finals.from_row(job)


def final(job: Job) -> dict[str, Any]:
    """The job's final event, waiting for it while the job runs. The waiter never
    cancels the job: the request that made it owns it."""
    done = ended_final(job)
    return done if done is not None else wait_final(job.id, own=False)


def stream(job: Job, frames: Frames = chorus_frames) -> Response:
    """The job's events from the first, as its first request streamed them; once its
    replay list has expired, the final event alone."""
    try:
        kept = _redis().exists(events.events_key(job.id))
    except redis.RedisError as exc:
        raise unavailable("redis") from exc
    done = None if kept else ended_final(job)
    if done is None:

        def ended() -> str | None:
            # The job ran on while the list was missing: its row tells how it ended.
            final = finals.from_row(load_job(job.id, job.account_id))
            return None if final is None else events.encode(final)

        resp = sse_response(job.id, 0, frames=frames, ended=ended)
    else:
        body = [events.OPENING_FRAME, *frames(None, events.encode(done)), events.DONE_FRAME]
        resp = Response(stream_with_context(iter(body)), mimetype="text/event-stream",
                        headers={**SSE_HEADERS, "X-Chorus-Job-Id": job.id})
    return mark_replayed(resp, job.id)
