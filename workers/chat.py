"""The chat job: one model (or the auto router's pick), with mesh failover over a chain."""

from __future__ import annotations

from typing import Any

from shared.router import Decision, get_router
from workers.breaking import breaker_for
from workers.calls import JobContext
from workers.jobs import JobSpec, Outcome, handler
from workers.mesh import MeshRun, run_chain
from workers.providers.base import ChatCall


def chat_call(body: dict[str, Any]) -> ChatCall:
    stop = body.get("stop")
    return ChatCall(
        messages=body["messages"],
        max_tokens=body.get("max_tokens"),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        stop=[stop] if isinstance(stop, str) else stop,
        tools=body.get("tools"),
        tool_choice=body.get("tool_choice"),
        response_format=body.get("response_format"),
    )


def resolve_model(ctx: JobContext, body: dict[str, Any]) -> tuple[str, Decision | None]:
    """The model to call first and, for ``auto``, the router's decision."""
    if body["model"] != "auto":
        return str(body["model"]), None
    decision = get_router(ctx.runtime.registry).route(body["messages"])
    return decision.model, decision


def chain_of(primary: str, body: dict[str, Any]) -> list[str]:
    """Primary then fallbacks, each once (auto may pick a model the chain names again)."""
    fallback = (body.get("routing") or {}).get("fallback") or []
    return list(dict.fromkeys([primary, *fallback]))


@handler("chat")
def run_chat(ctx: JobContext, spec: JobSpec) -> Outcome:
    body = spec.body
    primary, decision = resolve_model(ctx, body)
    first_reason = "primary"
    if decision is not None:
        first_reason = f"auto: {decision.reason}"
        ctx.publish({"event": "route", "model": primary, "status": "selected",
                     "rule": decision.rule, "reason": decision.reason})
    ids = chain_of(primary, body)
    mesh = len(ids) > 1
    registry = ctx.runtime.registry
    run = run_chain(ctx, [registry.get(m) for m in ids], chat_call(body),
                    breaker_for(ctx.runtime), first_reason=first_reason, announce=mesh)
    if mesh:
        ctx.publish({"event": "trace", **run.trace()})
    return outcome_of(run, primary, decision, mesh)


def outcome_of(run: MeshRun, primary: str, decision: Decision | None, mesh: bool) -> Outcome:
    final = run.answered or run.last_call
    result: dict[str, Any] = final.summary() if final is not None else {}
    if decision is not None:
        result["route_reason"] = decision.reason
    if mesh:
        result["trace"] = run.trace()
    resolved = final.model if final is not None else primary
    if run.cancelled:
        return Outcome("cancelled", result=result, calls=run.calls, resolved_model=resolved)
    if run.answered is not None:
        return Outcome("succeeded", result=result, calls=run.calls, resolved_model=resolved)
    err = run.last_error
    assert err is not None
    error: dict[str, Any] = {**err.describe(), "code": "upstream_error", "http_status": 502,
                             "upstream": err.code}
    if mesh and not err.retryable:
        error["message"] = f"{err.message}; not retried on other models (not retryable)"
    elif mesh:
        error["message"] = f"every model in the chain failed; last: {err.message}"
    return Outcome("failed", result=result, error=error, calls=run.calls,
                   resolved_model=resolved)
