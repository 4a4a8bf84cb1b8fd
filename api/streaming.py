"""Relay a job's events to an HTTP client: as SSE, or gathered into one JSON answer."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from flask import Response, current_app, request, stream_with_context

from api import drain as api_drain
from api.errors import ApiError, unavailable
from api.relay import ClientGone, Ended, Relay, follow_batches
from shared import events, readiness

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # Reverse proxies (nginx) must not buffer a stream.
    "X-Accel-Buffering": "no",
}


def _relay() -> Relay:
    relay: Relay = current_app.extensions["chorus.relay"]
    return relay


def _redis() -> redis.Redis:
    client: redis.Redis = current_app.extensions["chorus.redis"]
    return client


def on_disconnect(job_id: str) -> None:
    """Hook for a client that went away mid-stream (cancellation policy lives elsewhere)."""
    hook = current_app.extensions.get("chorus.on_disconnect")
    if hook is not None:
        hook(job_id)


# Renders one event (sequence number, JSON text) as the bytes a client reads; the
# sequence number is None for an event that is not in the job's replay list.
Frames = Callable[[int | None, str], Iterable[bytes]]


def hang_up_check(environ: dict[str, Any]) -> Callable[[], bool] | None:
    """Whether the client of this request hung up, for a stream waiting in silence; None
    where the server does not hand over the client's socket (gunicorn does)."""
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return None

    def gone() -> bool:
        # A client waiting for its response sends nothing: readable means it closed.
        try:
            return readiness.readable(sock) and sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    return gone


def chorus_frames(seq: int | None, data: str) -> Iterable[bytes]:
    if seq is None:
        return (f"data: {data}\n\n".encode(),)
    return (events.sse_frame(seq, data),)


def sse_response(
    job_id: str,
    after: int = 0,
    *,
    cancel_on_disconnect: bool = False,
    frames: Frames = chorus_frames,
    own: bool = False,
    ended: Ended | None = None,
) -> Response:
    """Stream the job's events after ``after``; ``own``: this process took the job;
    ``ended``: see ``follow_batches``.

    Every stream ends: with the final event and ``[DONE]``, or, when Redis fails, with a
    ``reconnect`` notice and a ``retry:`` line but no ``[DONE]``, so that the client
    resumes from the last id it was sent. A stream the server breaks off never cancels
    its job."""
    relay, client = _relay(), _redis()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    gone = hang_up_check(request.environ)
    # A draining process ends the streams a client can resume (see api/drain.py).
    drain = api_drain.of(app)
    resumable = frames is chorus_frames
    if resumable:
        gone = drain.or_gone(gone)

    def generate() -> Iterator[bytes]:
        finished = False
        sent = after
        # An SSE comment first, so the status line and X-Chorus-Job-Id reach the client at
        # once: one that drops before the first token can still resume by job id.
        yield events.OPENING_FRAME
        try:
            for batch in follow_batches(relay, client, job_id, after, own=own, gone=gone,
                                        ended=ended):
                if resumable and drain.draining:
                    raise ClientGone(job_id)
                if batch is None:
                    yield events.KEEPALIVE_FRAME
                    continue
                # One write per batch: a busy stream costs one syscall, not one per event.
                yield b"".join(b for seq, data in batch for b in frames(seq, data))
                # In order: the last one is the newest (None only for a rebuilt final).
                sent = batch[-1][0] or sent
            finished = True
            yield events.DONE_FRAME
        except redis.RedisError as exc:
            # Not the job's end: the stream's. Nothing here may say "final".
            finished = True
            app.logger.warning("stream of job %s broken off at %d: %r", job_id, sent, exc)
            notice = events.encode(events.reconnect_event(job_id, sent))
            yield events.retry_frame() + b"".join(frames(None, notice))
        except ClientGone:
            if resumable and drain.draining:
                # Not the client leaving: it resumes on another process, and the job runs on.
                finished = True
                yield api_drain.reconnect_frame(job_id, sent)
        finally:
            # A stream cut by a drain (or at its deadline) leaves its job running.
            if not finished and cancel_on_disconnect and not drain.draining:
                with app.app_context():
                    on_disconnect(job_id)

    headers = {**SSE_HEADERS, "X-Chorus-Job-Id": job_id}
    return Response(
        stream_with_context(generate()), mimetype="text/event-stream", headers=headers
    )


# How often a non-streamed request looks at its client's socket while the answer comes:
# one non-blocking poll, so a client that left is noticed within this long.
HANG_UP_CHECK_S = 0.5


def wait_final(job_id: str, *, own: bool = True,
               cancel_on_disconnect: bool = False) -> dict[str, Any]:
    """Block until the terminal event of a job and return it (non-streaming calls);
    ``own``: this process took the job. With ``cancel_on_disconnect`` a client that
    hangs up meanwhile is treated as a stream's is (the disconnect hook), and the
    request ends with 499, which nobody reads."""
    gone = hang_up_check(request.environ) if cancel_on_disconnect else None
    next_check = time.monotonic() + HANG_UP_CHECK_S
    try:
        for batch in follow_batches(_relay(), _redis(), job_id, own=own, gone=gone):
            if batch and events.is_final(batch[-1][1]):
                final: dict[str, Any] = json.loads(batch[-1][1])
                return final
            # Events keep coming while tokens stream, so the silence check of
            # ``follow_batches`` alone would not run until the answer is done.
            if gone is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + HANG_UP_CHECK_S
                if gone():
                    raise ClientGone(job_id)
    except redis.RedisError as exc:
        # The job goes on: its id lets the client read its end later.
        err = unavailable("redis")
        err.extra["job_id"] = job_id
        err.headers["X-Chorus-Job-Id"] = job_id
        raise err from exc
    except ClientGone:
        on_disconnect(job_id)
        raise ApiError(499, "client_closed_request",
                       "the client closed the connection before the answer") from None
    raise unavailable("event stream")
