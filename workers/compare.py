"""Compare: the same request to 2-9 models at once (a chord), then a side-by-side summary."""

from __future__ import annotations

from typing import Any

from shared.registry import ModelSpec
from workers.calls import JobContext
from workers.jobs import JobSpec, Outcome, handler
from workers.pipeline import start
from workers.providers.base import ChatCall
from workers.stages import (
    PipeState,
    Record,
    Stage,
    Step,
    builder,
    call_summary,
    is_ok,
    missing_summary,
    register_kind,
    request_call,
)


def _key(model: str) -> str:
    return f"M:{model}"


@handler("compare")
def run_compare(ctx: JobContext, spec: JobSpec) -> None:
    steps = [Step(key=_key(m), model=m, role="candidate", prompt="compare")
             for m in spec.body["models"]]
    start(ctx, spec, Stage("answers", steps))


@builder("compare")
def _compare_call(body: dict[str, Any], _step: Step, _quoted: dict[str, Record],
                  _model: ModelSpec) -> ChatCall:
    # Everything the client asked for, tools included: compare shows each model as is.
    return request_call(body)


def compare_result(state: PipeState) -> dict[str, Any]:
    results = []
    for model in state.body["models"]:
        rec = state.records.get(_key(model))
        results.append(call_summary(rec) if rec is not None
                       else missing_summary(model, role="candidate"))
    return {"results": results, "summary": summarize(results)}


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Fastest first token, fastest whole answer, cheapest answer (ties: request order)."""
    ok = [r for r in results if "error" not in r and not r.get("cancelled")]
    timed = [r for r in ok if r.get("ttft_ms") is not None]
    out: dict[str, Any] = {
        "answered": len(ok),
        "failed": len(results) - len(ok),
        "total_cost": round(sum(float(r.get("cost") or 0) for r in results), 6),
        "fastest_ttft": None,
        "fastest_total": None,
        "cheapest": None,
    }
    if timed:
        best = min(timed, key=lambda r: r["ttft_ms"])
        out["fastest_ttft"] = {"model": best["model"], "ttft_ms": best["ttft_ms"]}
    if ok:
        best = min(ok, key=lambda r: r["latency_ms"])
        out["fastest_total"] = {"model": best["model"], "latency_ms": best["latency_ms"]}
        best = min(ok, key=lambda r: r["cost"])
        out["cheapest"] = {"model": best["model"], "cost": best["cost"]}
    return out


def advance_compare(state: PipeState, _stage: str) -> Stage | Outcome:
    result = compare_result(state)
    if not any(is_ok(r) for r in state.records.values()):
        error = {"code": "upstream_error", "message": "every model failed", "http_status": 502}
        return Outcome("failed", result=result, error=error)
    return Outcome("succeeded", result=result)


register_kind("compare", advance_compare, compare_result)
