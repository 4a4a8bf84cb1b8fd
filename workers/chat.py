"""The chat job: one model (or the auto router's pick), streamed to the client."""

from __future__ import annotations

from typing import Any

from workers.calls import JobContext, run_model_call
from workers.jobs import JobSpec, Outcome, handler
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


def resolve_model(ctx: JobContext, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """The model to call and, for ``auto``, the router's decision to report."""
    if body["model"] != "auto":
        return body["model"], None
    registry = ctx.runtime.registry
    model_id = str(registry.defaults.get("auto", next(iter(registry.models))))
    return model_id, {"event": "route", "model": model_id, "status": "selected",
                      "reason": "default auto model"}


@handler("chat")
def run_chat(ctx: JobContext, spec: JobSpec) -> Outcome:
    body = spec.body
    model_id, decision = resolve_model(ctx, body)
    if decision is not None:
        ctx.publish(decision)
    model = ctx.runtime.registry.get(model_id)
    res = run_model_call(ctx, model, chat_call(body))
    if res.cancelled:
        return Outcome("cancelled", result=res.summary(), calls=[res], resolved_model=model_id)
    if res.error is not None:
        error = {**res.error.describe(), "code": "upstream_error", "http_status": 502,
                 "upstream": res.error.code}
        return Outcome("failed", result=res.summary(), error=error, calls=[res],
                       resolved_model=model_id)
    return Outcome("succeeded", result=res.summary(), calls=[res], resolved_model=model_id)
