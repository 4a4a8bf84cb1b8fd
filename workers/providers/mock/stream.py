"""Paces a rendered answer onto the socket: TTFT, token gaps, faults, client-gone detection.

A wire format renders the whole answer up front as a list of ``Unit``s; this module owns
the timing, so latency and faults behave identically in every format.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from workers.providers.mock.behaviour import HANG_LIMIT_S, CallSettings, MockState
from workers.providers.mock.plan import MockRequest, Plan


@dataclass(frozen=True)
class Unit:
    """One write. ``head`` goes out at once, ``start`` after TTFT, ``token`` is counted
    for faults and paced by ``token_ms``, ``tail`` is the terminating events."""

    data: bytes
    kind: str


class BadRequestBody(ValueError):
    """The request is not something the real API would accept; answered with 400."""


class WireFormat(Protocol):
    name: str

    def parse_request(self, body: dict[str, Any], url_model: str | None) -> MockRequest: ...

    def render_stream(self, plan: Plan, req: MockRequest) -> list[Unit]: ...

    def render_body(self, plan: Plan, req: MockRequest) -> dict[str, Any]: ...

    def error_body(self, status: int, message: str) -> dict[str, Any]: ...

    def stream_error(self, status: int, message: str) -> bytes: ...


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


MALFORMED = b'data: {"choices": [{"delta": {"content": "broken\n\n'

ERROR_MESSAGES = {
    400: "Invalid request (mock).",
    401: "Invalid API key (mock).",
    403: "Permission denied (mock).",
    404: "Not found (mock).",
    429: "Rate limit reached (mock); slow down.",
    500: "The server had an error while processing your request (mock).",
    502: "Bad gateway (mock).",
    503: "The service is temporarily unavailable (mock).",
    529: "Overloaded (mock).",
}


def error_message(status: int) -> str:
    return ERROR_MESSAGES.get(status, f"Upstream error {status} (mock).")


# How often a stream looks for a client that went away between two of its writes.
CHECK_GONE_S = 0.02


def client_gone(sock: socket.socket | None) -> bool:
    """True once the peer closed its side; a keep-alive client sends nothing mid-response."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def hold(sock: socket.socket | None, limit: float = HANG_LIMIT_S) -> bool:
    """Send nothing until the client goes away (True) or ``limit`` seconds pass (False)."""
    deadline = time.monotonic() + limit
    while (left := deadline - time.monotonic()) > 0:
        if sock is None:
            time.sleep(min(1.0, left))
            continue
        try:
            readable, _, _ = select.select([sock], [], [], min(1.0, left))
            if readable and sock.recv(1, socket.MSG_PEEK) == b"":
                return True
        except (OSError, ValueError):
            return True
        if readable:
            # The client pipelined bytes we will never read; do not spin on them.
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    return False


def abort(sock: socket.socket | None) -> None:
    """Drop the connection mid-body so the client sees a truncated response, not an end."""
    if sock is None:
        # No socket outside gevent's server: an exception makes the WSGI server drop it.
        raise ConnectionAbortedError("mock fault: disconnect")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def paced(
    state: MockState,
    fmt: WireFormat,
    plan: Plan,
    units: list[Unit],
    settings: CallSettings,
    sock: socket.socket | None,
) -> Iterator[bytes]:
    """The streaming body. Runs inside the server's write loop: a failed write closes
    this generator (GeneratorExit at a ``yield``), which counts as a client disconnect."""
    state.stream_opened()
    outcome = "client_disconnect"
    fault = settings.fault
    trigger = None if fault is None else (fault.after_tokens or 0)
    profile = settings.profile
    sent = 0
    started = False
    due = 0.0
    checked = time.monotonic()
    try:
        for unit in units:
            if fault is not None and trigger is not None:
                due = (unit.kind == "token" and sent >= trigger) or unit.kind == "tail"
                if due:
                    outcome = "fault"
                    if fault.kind == "hang":
                        outcome = "client_disconnect" if hold(sock) else "fault"
                    elif fault.kind == "malformed":
                        yield MALFORMED
                    elif fault.kind == "status":
                        yield fmt.stream_error(fault.status, error_message(fault.status))
                    else:
                        abort(sock)
                    return
            if unit.kind != "head":
                # Pace against deadlines, not relative sleeps: under load each sleep
                # overshoots a little, and a real provider does not drift that way.
                first = not started
                if first:
                    due = time.monotonic() + profile.ttft_ms / 1000.0
                    started = True
                elif unit.kind == "token" and sent > 0:
                    due += profile.token_ms / 1000.0
                delay = due - time.monotonic()
                if delay > 0:
                    # The wait for the first token may be long (a model thinking): a
                    # client that leaves meanwhile is seen at once, as upstream would.
                    if first and hold(sock, delay):
                        return
                    if not first:
                        time.sleep(delay)
                # A failed write ends the stream too; the check finds a client gone
                # between writes, at most every CHECK_GONE_S: two syscalls before each
                # token would cost a fast stream more than its write.
                now = time.monotonic()
                if now - checked >= CHECK_GONE_S:
                    checked = now
                    if client_gone(sock):
                        return
            yield unit.data
            if unit.kind == "token":
                sent += 1
        outcome = "completed"
    finally:
        state.stream_closed(plan.model, outcome)


def generation_seconds(plan: Plan, settings: CallSettings) -> float:
    """How long a non-streaming answer takes: the whole stream, without the bytes."""
    units = len(plan.tokens) if plan.tool_call is None else len(plan.tool_call.fragments)
    p = settings.profile
    return (p.ttft_ms + max(0, units - 1) * p.token_ms) / 1000.0
