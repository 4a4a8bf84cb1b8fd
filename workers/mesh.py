"""Mesh failover: walk a chain of models, skip open breakers, continue broken answers.

Retryable failures (429, 5xx, timeout, connection error, broken stream) move on to the
next model; a non-retryable one (400, 401/403, spent quota) ends the chain, because the
same request would fail the same way on the next model and burn its credits too. When a
stream breaks after tokens were sent, the next model is given the partial answer and
its deltas continue it, so the client reads one answer. Every call asks the model's
shared breaker first (unless it is the only model there is) and reports back after.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shared.breaker import PROBE, Breaker, Ticket
from shared.registry import ModelSpec
from workers import meter
from workers.breaking import BreakerOpen, acquire, failure_reason, report, skipped
from workers.calls import CallResult, JobContext, run_model_call
from workers.providers.base import ChatCall, estimate_tokens
from workers.providers.errors import ProviderError

log = logging.getLogger(__name__)

CONTINUE_PROMPT = (
    "Your previous reply was cut off. Continue it from exactly where it stopped, "
    "mid-sentence if need be: do not repeat any of it, add no preamble, keep its language "
    "and format."
)
# A repeat shorter than this at the seam is left alone: it may be a coincidence.
MIN_OVERLAP = 12


def overlap(prefix: str, text: str, minimum: int = MIN_OVERLAP) -> int:
    """Length of the longest tail of ``prefix`` that ``text`` starts with (0 if short)."""
    if len(text) < minimum or len(prefix) < minimum:
        return 0
    head = text[:minimum]
    at = prefix.find(head, max(0, len(prefix) - len(text)))
    while at != -1:
        if text.startswith(prefix[at:]):
            return len(prefix) - at
        at = prefix.find(head, at + 1)
    return 0


class RepeatGuard:
    """Continues ``prefix``; holds back the new model's first deltas while they could still
    be a repeat of it (models told to continue often restart the sentence or the whole
    answer) and drops the repeated part, so nothing reaches the client twice."""

    def __init__(self, prefix: str, minimum: int = MIN_OVERLAP) -> None:
        self.prefix = prefix
        self.minimum = minimum
        self._held = ""
        self._decided = False

    def feed(self, text: str, end: bool) -> str:
        if self._decided:
            return text
        self._held += text
        if not end and self._held in self.prefix:
            return ""
        self._decided = True
        out = self._held[overlap(self.prefix, self._held, self.minimum):]
        self._held = ""
        return out


def continue_call(call: ChatCall, partial: str) -> ChatCall:
    """The call a fallback gets after a stream broke: the partial answer, then the ask."""
    messages = [
        *call.messages,
        {"role": "assistant", "content": partial},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]
    max_tokens = call.max_tokens
    if max_tokens is not None:
        max_tokens = max(1, max_tokens - estimate_tokens(partial))
    return replace(call, messages=messages, max_tokens=max_tokens)


@dataclass
class Attempt:
    model: str
    status: str  # ok | failed | skipped | cancelled
    reason: str
    latency_ms: float = 0.0

    def view(self) -> dict[str, Any]:
        return {"model": self.model, "status": self.status, "reason": self.reason,
                "latency_ms": round(self.latency_ms, 1)}


@dataclass
class MeshRun:
    """What a chain did: every attempt, every call (skips included, for the request log)."""

    attempts: list[Attempt] = field(default_factory=list)
    calls: list[CallResult] = field(default_factory=list)
    answered: CallResult | None = None
    total_ms: float = 0.0
    # Time from the chain's start to the answering model's call: what failover cost.
    failover_ms: float = 0.0

    @property
    def last_call(self) -> CallResult | None:
        made = [c for c in self.calls if not isinstance(c.error, BreakerOpen)]
        return made[-1] if made else None

    @property
    def cancelled(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].status == "cancelled"

    @property
    def last_error(self) -> ProviderError | None:
        return self.calls[-1].error if self.calls else None

    def trace(self) -> dict[str, Any]:
        return {
            "final_model": self.answered.model if self.answered else None,
            "attempts": [a.view() for a in self.attempts],
            "total_ms": round(self.total_ms, 1),
            "failover_ms": round(self.failover_ms, 1),
        }


def run_chain(
    ctx: JobContext,
    chain: Sequence[ModelSpec],
    call: ChatCall,
    breaker: Breaker,
    *,
    first_reason: str = "primary",
    announce: bool = True,
) -> MeshRun:
    """Try each model in turn until one answers. ``announce`` publishes ``route`` events
    (mesh mode); a chain of one model never skips it (there is nothing to fall back to)
    but still reports its outcome to the breaker."""
    run = MeshRun()
    consult = len(chain) > 1
    answer = ""
    broken: ModelSpec | None = None
    start = time.perf_counter()
    for model in chain:
        if ctx.cancelled():
            run.attempts.append(Attempt(model.id, "cancelled", "job cancelled"))
            break
        ticket = acquire(breaker, model.id) if consult else None
        if ticket is not None and not ticket.allowed:
            _skip(ctx, run, model, ticket, announce)
            continue
        reason = first_reason
        if run.attempts:
            last = run.attempts[-1]
            reason = f"fallback after {last.model} {last.status}"
        if announce:
            ctx.publish({"event": "route", "model": model.id, "status": "trying",
                         "reason": reason + (" (half-open probe)" if _is_probe(ticket) else "")})
        begun = time.perf_counter()
        # The hold planned the partial answer at the failed call's expected length.
        excess = meter.quoted_excess([(broken, answer)], call.max_tokens) if broken else 0
        res = run_model_call(
            ctx, model, continue_call(call, answer) if answer else call, emit_error=False,
            continuation=RepeatGuard(answer) if answer else None, prompt_excess=excess,
        )
        run.calls.append(res)
        report(breaker, model.id, res, ticket)
        elapsed = (time.perf_counter() - begun) * 1000
        if res.cancelled:
            run.attempts.append(Attempt(model.id, "cancelled", "job cancelled", elapsed))
            break
        if res.error is None:
            run.attempts.append(Attempt(model.id, "ok", reason, elapsed))
            run.answered = res
            run.failover_ms = (begun - start) * 1000
            break
        why = failure_reason(res.error, res.text)
        answer += res.text
        broken = model
        run.attempts.append(Attempt(model.id, "failed", why, elapsed))
        if announce:
            ctx.publish({"event": "route", "model": model.id, "status": "failed",
                         "reason": why, "retryable": res.error.retryable})
        if not res.error.retryable:
            break
    run.total_ms = (time.perf_counter() - start) * 1000
    if run.answered is None and not run.cancelled and run.calls:
        failed = run.calls[-1]
        assert failed.error is not None
        ctx.publish({"event": "error", "model": failed.model, "error": failed.error.describe(),
                     "content_length": len(answer)})
    if len(run.attempts) > 1:
        _log_failover(ctx, run)
    return run


def _is_probe(ticket: Ticket | None) -> bool:
    return ticket is not None and ticket.decision == PROBE


def _skip(ctx: JobContext, run: MeshRun, model: ModelSpec, ticket: Ticket,
          announce: bool) -> None:
    reason = ticket.reason()
    run.attempts.append(Attempt(model.id, "skipped", reason))
    run.calls.append(skipped(model, ticket))
    log.info("mesh skip job=%s model=%s reason=%r", ctx.job_id, model.id, reason)
    if announce:
        ctx.publish({"event": "route", "model": model.id, "status": "skipped",
                     "reason": reason})


def _log_failover(ctx: JobContext, run: MeshRun) -> None:
    path = " > ".join(f"{a.model}:{a.status}" for a in run.attempts)
    reasons = "; ".join(f"{a.model}: {a.reason}" for a in run.attempts if a.status != "ok")
    log.warning(
        "mesh failover job=%s final_model=%s path=%s added_ms=%.1f total_ms=%.1f reasons=%r",
        ctx.job_id, run.answered.model if run.answered else None, path, run.failover_ms,
        run.total_ms, reasons, extra={"mesh": run.trace()},
    )


