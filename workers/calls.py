"""One model call inside a job: stream it, publish its events, account for its tokens."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from shared.registry import ModelSpec
from workers.meter import Meter
from workers.providers.base import ChatCall, Usage, estimate_tokens, messages_text
from workers.providers.client import stream_chat
from workers.providers.errors import ProviderError
from workers.publisher import EventSink
from workers.runtime import Runtime

CANCEL_CHECK_S = 0.2


@dataclass
class JobContext:
    job_id: str
    account_id: int
    runtime: Runtime
    # Provider name -> the account's own key (BYOK); such calls cost no credits.
    own_keys: dict[str, str] = field(default_factory=dict)
    # Called before the job's first event goes out (and until it passes): a job started
    # before its claim came back publishes nothing unless the claim made it ours.
    gate: Callable[[], None] | None = None
    _cancel_checked: float = 0.0
    _cancelled: bool = False

    @property
    def publisher(self) -> EventSink:
        return self.runtime.publisher

    def publish(self, event: dict[str, Any]) -> None:
        if self.gate is not None:
            self.gate()
            self.gate = None
        self.runtime.publisher.publish(self.job_id, event)

    def seed_cancel(self, cancelled: bool) -> None:
        """The cancel flag as the caller's own round trip just read it: Redis need not be
        asked again for another 200 ms."""
        self._cancelled = cancelled
        self._cancel_checked = time.monotonic()

    def cancelled(self, force: bool = False) -> bool:
        """Whether the job's cancel flag is up; reads Redis at most every 200 ms."""
        if self._cancelled:
            return True
        now = time.monotonic()
        if force or now - self._cancel_checked >= CANCEL_CHECK_S:
            self._cancel_checked = now
            from shared.events import cancel_key

            self._cancelled = bool(self.runtime.redis.exists(cancel_key(self.job_id)))
        return self._cancelled


class Continuation(Protocol):
    """The answer a call continues (a failed call's partial text), and the filter that
    drops whatever of it the new model repeats; ``end`` marks the stream's last delta."""

    prefix: str

    def feed(self, text: str, end: bool) -> str: ...


@dataclass
class CallResult:
    model: str
    provider: str
    role: str | None
    layer: int | None
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    cost: Decimal = Decimal(0)
    error: ProviderError | None = None
    cancelled: bool = False
    # Text this call continues; ``text`` holds only what this call added.
    prefix: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled

    @property
    def tokens_per_second(self) -> float:
        gen_ms = self.latency_ms - (self.ttft_ms or 0.0)
        return round(self.completion_tokens / (gen_ms / 1000), 2) if gen_ms > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The final fields of a model call, as SPEC.md lists them."""
        out: dict[str, Any] = {
            "model": self.model,
            "ttft_ms": self.ttft_ms,
            "latency_ms": round(self.latency_ms, 3),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_second": self.tokens_per_second,
            "cost": float(self.cost),
            "finish_reason": self.finish_reason,
            "full_content": self.prefix + self.text,
        }
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.usage_estimated:
            out["usage_estimated"] = True
        return out

    def to_record(self) -> dict[str, Any]:
        """Plain JSON, for calls that cross task boundaries (pipeline state, chord results)."""
        return {
            "model": self.model, "provider": self.provider, "role": self.role,
            "layer": self.layer, "text": self.text, "tool_calls": self.tool_calls,
            "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usage_estimated": self.usage_estimated, "ttft_ms": self.ttft_ms,
            "latency_ms": self.latency_ms, "cost": str(self.cost),
            "error": None if self.error is None else self.error.describe(),
            "cancelled": self.cancelled,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> CallResult:
        error = None
        if rec.get("error"):
            raw = rec["error"]
            error = ProviderError(str(raw.get("message", "")), status=raw.get("status"),
                                  retry_after=raw.get("retry_after"))
            error.code = str(raw.get("code", error.code))
        return cls(
            model=rec["model"], provider=rec.get("provider", ""), role=rec.get("role"),
            layer=rec.get("layer"), text=rec.get("text", ""),
            tool_calls=list(rec.get("tool_calls") or []),
            finish_reason=rec.get("finish_reason"),
            prompt_tokens=int(rec.get("prompt_tokens", 0)),
            completion_tokens=int(rec.get("completion_tokens", 0)),
            usage_estimated=bool(rec.get("usage_estimated", False)),
            ttft_ms=rec.get("ttft_ms"), latency_ms=float(rec.get("latency_ms", 0.0)),
            cost=Decimal(str(rec.get("cost", "0"))), error=error,
            cancelled=bool(rec.get("cancelled", False)),
        )


class _ToolCalls:
    """Reassembles streamed tool-call fragments into whole calls (Chorus' one form)."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, index: int, id_: str | None, name: str | None, args: str) -> None:
        call = self.calls.setdefault(
            index, {"id": id_ or f"call_{index}", "type": "function",
                    "function": {"name": name or "", "arguments": ""}}
        )
        if id_:
            call["id"] = id_
        if name:
            call["function"]["name"] = name
        call["function"]["arguments"] += args

    def result(self) -> list[dict[str, Any]]:
        return [self.calls[i] for i in sorted(self.calls)]


def run_model_call(
    ctx: JobContext,
    model: ModelSpec,
    call: ChatCall,
    *,
    role: str | None = None,
    layer: int | None = None,
    emit_final: bool = True,
    emit_error: bool = True,
    on_text: Callable[[str], None] | None = None,
    extra_tags: Mapping[str, Any] | None = None,
    continuation: Continuation | None = None,
    prompt_excess: int = 0,
) -> CallResult:
    """Stream one call, publishing a chunk event per delta and a final event with usage.

    Provider errors do not raise: they come back in ``CallResult.error`` (with what was
    produced before the failure) so pipelines and failover decide what happens next.
    With ``continuation`` the deltas extend its prefix: ``content_length`` counts on from
    it and ``full_content`` includes it. The job's hold grows with the answer
    (``workers.meter``); a call whose hold cannot grow stops with ``finish_reason:
    "length"`` after a ``budget`` notice. ``prompt_excess``: prompt tokens the job's hold
    did not foresee for this call (quoted answers longer than planned), held first.
    """
    rt = ctx.runtime
    res = CallResult(model=model.id, provider=model.provider.name, role=role, layer=layer,
                     prefix=continuation.prefix if continuation is not None else "")
    tags: dict[str, Any] = {}
    if role is not None:
        tags["role"] = role
    if layer is not None:
        tags["layer"] = layer
    # Pipelines tell apart calls to the same model (self_moa's samples, a judge's re-ask).
    tags.update(extra_tags or {})
    own_key = ctx.own_keys.get(model.provider.name)
    usage: Usage | None = None
    tools = _ToolCalls()
    parts: list[str] = []
    length = len(res.prefix)
    meter = Meter(ctx.job_id, model, call, charge=own_key is None,
                  prompt_excess=prompt_excess)
    start = time.perf_counter()
    guard = rt.stopper.watch(ctx.job_id)
    stream = stream_chat(rt.http, model, call, api_key=own_key, timeouts=rt.timeouts,
                         pacer=rt.pacer, guard=guard)
    try:
        for delta in stream:
            now_ms = (time.perf_counter() - start) * 1000
            if delta.usage is not None:
                usage = delta.usage
            if delta.finish_reason is not None:
                res.finish_reason = delta.finish_reason
            text = delta.text
            if continuation is not None:
                text = continuation.feed(text, delta.finish_reason is not None)
            if not text and not delta.tool_calls:
                continue
            arguments = sum(len(t.arguments) for t in delta.tool_calls) if delta.tool_calls else 0
            going = meter.add(text, arguments)
            if not going:
                # Past what the job holds: only the part the hold covers goes out.
                text = meter.trim(text)
            if res.ttft_ms is None:
                res.ttft_ms = round(now_ms, 3)
            event: dict[str, Any] = {"event": "chunk", "model": model.id, **tags}
            event["delta"] = text
            if text:
                parts.append(text)
                length += len(text)
                if on_text is not None:
                    on_text(text)
            if delta.tool_calls:
                event["tool_calls"] = [
                    {"index": t.index, "id": t.id, "name": t.name, "arguments": t.arguments}
                    for t in delta.tool_calls
                ]
                for t in delta.tool_calls:
                    tools.add(t.index, t.id, t.name, t.arguments)
            event.update(done=False, latency_ms=round(now_ms, 3), content_length=length)
            if text or delta.tool_calls:
                ctx.publish(event)
            if guard.stopped or not going:
                break
    except ProviderError as exc:
        res.error = exc
    finally:
        stream.close()
        rt.stopper.release(guard)
    if guard.stopped:
        # Its job was cancelled: a broken read after the stop is the stop, not an error.
        res.cancelled, res.error = True, None
        ctx.seed_cancel(True)
    res.latency_ms = (time.perf_counter() - start) * 1000
    res.text = "".join(parts)
    res.tool_calls = tools.result()
    if meter.stopped and not res.cancelled:
        # Ended by the hold, not the provider: no usage came, what was produced is counted.
        res.error, res.finish_reason, usage = None, "length", None
        ctx.publish({"event": "budget", "model": model.id, **tags, "reason": meter.refused,
                     "message": _STOPPED.get(meter.refused or "", _STOPPED[""]),
                     "content_length": length})
    _account(res, model, call, usage, charge=own_key is None)
    meter.top_up(res.cost)
    if res.error is not None:
        res.finish_reason = "error"
        if emit_error:
            ctx.publish(
                {"event": "error", "model": model.id, **tags, "error": res.error.describe(),
                 "content_length": length}
            )
    elif emit_final:
        ctx.publish(
            {"event": "chunk", **tags, "delta": "", "done": True,
             "content_length": length, **res.summary()}
        )
    return res


_STOPPED = {
    "insufficient_credits": "the answer was stopped: the wallet cannot hold more credits",
    "budget_exceeded": "the answer was stopped: a budget has no room for more credits",
    "": "the answer was stopped: its credit hold could not be extended",
}


def _account(res: CallResult, model: ModelSpec, call: ChatCall, usage: Usage | None,
             *, charge: bool) -> None:
    if usage is not None and (usage.completion_tokens or not res.text):
        res.prompt_tokens, res.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        res.usage_estimated = usage.estimated
    else:
        # Broken or cancelled streams rarely carry usage: count what was produced offline.
        res.prompt_tokens = estimate_tokens(messages_text(call.messages))
        res.completion_tokens = estimate_tokens(res.text)
        res.usage_estimated = True
    produced = bool(res.text or res.tool_calls or res.completion_tokens)
    # A call that failed before producing anything costs nothing, as upstream bills it.
    billable = charge and (produced or res.error is None)
    res.cost = model.cost(res.prompt_tokens, res.completion_tokens) if billable else Decimal(0)
