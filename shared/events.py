"""The event stream's wire format and the Redis names that carry it.

A job's events live twice: appended to a replay list (the source of truth, numbered by
position, 1-based) and published on a per-job channel for live delivery. The API process
that took the job also names its own relay channel, to which every event of the job is
published too: that process's streams follow the job without subscribing to it. Pub/sub
may drop messages (a slow subscriber, a reconnect); the list never does, so relays fill
any gap in sequence numbers from it.

A list also has an epoch (its own key, written by the publisher's script when it makes
the list): ``<base>:<nonce>``. Event ids are ``base + position``. A list made for a new
job has base 0, so its ids are 1, 2, 3 ...; a list made again after Redis lost the first
one under a running job (see ``workers.publisher``) gets a base above every id of the
lists before it, and starts with a ``retry`` event (``lost_event``): a reader whose id is
below the base holds a position of an older list and reads this one from its start.
"""

from __future__ import annotations

import json
from typing import Any

DONE_FRAME = b"data: [DONE]\n\n"
KEEPALIVE_FRAME = b": keepalive\n\n"
OPENING_FRAME = b": chorus\n\n"

# Event ids are list positions, and Redis reads list positions as signed 64-bit integers.
MAX_EVENT_ID = 2**63 - 1
# How long a client should wait before it resumes a stream the server broke off: about
# what a Redis restart takes, and not so short that a long outage becomes a storm.
RECONNECT_RETRY_MS = 2000


def events_key(job_id: str) -> str:
    return f"chorus:job:{job_id}:events"


def epoch_key(job_id: str) -> str:
    """The replay list's epoch: which list it is, and the base of its event ids."""
    return f"chorus:job:{job_id}:epoch"


# The ids of one list stay below its base plus this; a list made again gets a base of
# at least the wall clock's seconds times this (and above its predecessor's range), which
# stays below 2**53, where the scripts' Lua numbers are still exact integers.
EPOCH_SPAN = 10**6


def epoch_base(epoch: str | bytes | None) -> int:
    """The base of the event ids of a list with this epoch (0: none, or a first list)."""
    if not epoch:
        return 0
    text = epoch.decode() if isinstance(epoch, bytes) else epoch
    return int(text.partition(":")[0])


def channel(job_id: str) -> str:
    return f"chorus:ev:{job_id}"


def relay_key(job_id: str) -> str:
    """The relay channel of the API process that took the job, while the job runs."""
    return f"chorus:job:{job_id}:relay"


def relay_message(message: bytes | str) -> tuple[str, tuple[int, str]]:
    """A relay channel's payload is ``<job id>\\n<seq>\\n<json>``."""
    text = message.decode() if isinstance(message, bytes) else message
    job_id, _, rest = text.partition("\n")
    return job_id, split_message(rest)


# Where a cancel is announced (the job id): workers stop its calls at once; the flag
# stays the record for those that missed the message (pub/sub is at-most-once).
CANCELS_CHANNEL = "chorus:cancels"


def cancel_key(job_id: str) -> str:
    return f"chorus:job:{job_id}:cancel"


def request_key(job_id: str) -> str:
    """The job's ticket: what its worker needs to start (see ``api.submit``)."""
    return f"chorus:job:{job_id}:request"


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str)


def is_final(data: str) -> bool:
    """True for the job's terminal event, which ``final_event`` always writes first."""
    return data.startswith('{"final":true')


def final_event(kind: str, **fields: Any) -> dict[str, Any]:
    """The job's last event: ``event`` is ``done`` or ``error``; ``final`` leads the JSON."""
    return {"final": True, "event": kind, **fields}


def reconnect_event(job_id: str, last_event_id: int) -> dict[str, Any]:
    """Not final: the event stream broke off (Redis unavailable) while the job may still
    run; the client resumes after ``last_event_id`` and loses nothing."""
    return {"event": "reconnect", "job_id": job_id, "last_event_id": last_event_id,
            "retry_ms": RECONNECT_RETRY_MS,
            "message": "the event stream was interrupted (the event bus is unavailable), "
                       "not the job: reconnect with Last-Event-ID to resume"}


def lost_event(first_id: int) -> dict[str, Any]:
    """The first event of a replay list made again after Redis lost the job's events
    (``first_id`` is its own id, so no two lists start alike): discard every call's
    partial text; what each call has said so far follows."""
    return {"event": "retry", "reason": "events lost", "first_id": first_id,
            "message": "the job's earlier events were lost with the event bus; every "
                       "call's text so far is sent again after this event"}


def retry_frame(ms: int = RECONNECT_RETRY_MS) -> bytes:
    """Sets how long an EventSource waits before it reconnects (no event is dispatched)."""
    return f"retry: {ms}\n\n".encode()


def parse_event_id(raw: str) -> int | None:
    """An event id a client sends back: ASCII digits, below 2**63; None if it is not."""
    # 2**63 has 19 digits; longer text is refused before int() parses it.
    if not (raw.isascii() and raw.isdigit()) or len(raw.lstrip("0")) > 19:
        return None
    value = int(raw)
    return value if value <= MAX_EVENT_ID else None


def sse_frame(seq: int, data: str) -> bytes:
    return f"id: {seq}\ndata: {data}\n\n".encode()


def split_message(message: bytes | str) -> tuple[int, str]:
    """A pub/sub payload is ``<seq>\\n<json>``."""
    text = message.decode() if isinstance(message, bytes) else message
    seq, _, data = text.partition("\n")
    return int(seq), data
