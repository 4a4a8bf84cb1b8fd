"""Blend: candidates answer in parallel (a chord per layer), then a synthesiser merges them.

``consensus``, ``council`` and ``best_of`` run one candidate layer and one synthesis call;
``moa`` runs 1-3 layers whose models see the previous layer's answers; ``self_moa`` samples
one model 2-8 times over a temperature spread and agent prompts; ``chain`` folds the
answers in one after another as a Celery chain. Every stage works with the answers that
arrived; it fails only when none did.
"""

from __future__ import annotations

from typing import Any

from shared.plans import DEFAULT_SAMPLES, synthesizer_id
from shared.registry import ModelSpec
from workers import prompts
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
    register_kind,
    request_call,
)

LOW_TEMPERATURE, HIGH_TEMPERATURE = 0.3, 1.2


def temperatures(count: int) -> list[float]:
    """``count`` temperatures evenly spread from 0.3 to 1.2, for self_moa's samples."""
    if count == 1:
        return [LOW_TEMPERATURE]
    gap = (HIGH_TEMPERATURE - LOW_TEMPERATURE) / (count - 1)
    return [round(LOW_TEMPERATURE + i * gap, 3) for i in range(count)]


def layer_event(layer: int, status: str, role: str, **fields: Any) -> dict[str, Any]:
    return {"event": "layer", "layer": layer, "role": role, "status": status, **fields}


def strategy(body: dict[str, Any]) -> str:
    return str(body.get("strategy") or "consensus")


def layer_count(body: dict[str, Any]) -> int:
    return int(body.get("layers") or 1) if strategy(body) == "moa" else 1


@handler("blend")
def run_blend(ctx: JobContext, spec: JobSpec) -> None:
    start(ctx, spec, first_layer(spec.body))


def first_layer(body: dict[str, Any]) -> Stage:
    if strategy(body) == "self_moa":
        model = body["models"][0]
        temps = temperatures(int(body.get("samples") or DEFAULT_SAMPLES))
        steps = [Step(key=f"S{i}", model=model, role="candidate", layer=1,
                      prompt="self_moa_sample", temperature=t, tags={"sample": i})
                 for i, t in enumerate(temps, 1)]
    else:
        steps = [Step(key=f"L1:{m}", model=m, role="candidate", layer=1, prompt="candidate")
                 for m in body["models"]]
    started = layer_event(1, "started", "candidate", models=[s.model for s in steps])
    return Stage("layer:1", steps, events=[started])


def advance_blend(state: PipeState, stage: str) -> Stage | Outcome:
    kind, _, number = stage.partition(":")
    if kind == "layer":
        return after_layer(state, int(number))
    return after_synthesis(state)


def _layer_keys(state: PipeState, layer: int) -> list[str]:
    """The layer's calls in request order (samples in sample order)."""
    order = {m: i for i, m in enumerate(state.body["models"])}
    keys = [k for k, r in state.records.items()
            if r.get("role") == "candidate" and r.get("layer") == layer]
    return sorted(keys, key=lambda k: (order.get(state.records[k]["model"], 0),
                                       state.records[k].get("sample") or 0))


def after_layer(state: PipeState, layer: int) -> Stage | Outcome:
    body = state.body
    keys = _layer_keys(state, layer)
    answered = [r["key"] for r in state.answered(keys)]
    state.publish(layer_event(layer, "done", "candidate", answered=len(answered),
                              failed=len(keys) - len(answered)))
    if not answered:
        error = {"code": "upstream_error", "http_status": 502,
                 "message": f"every candidate of layer {layer} failed"}
        return Outcome("failed", result=blend_result(state, None), error=error)
    if strategy(body) == "moa" and layer < layer_count(body):
        nxt = layer + 1
        steps = [Step(key=f"L{nxt}:{m}", model=m, role="candidate", layer=nxt,
                      prompt="moa_layer", inputs=answered) for m in body["models"]]
        started = layer_event(nxt, "started", "candidate", models=list(body["models"]))
        return Stage(f"layer:{nxt}", steps, events=[started])
    synth = synthesizer_id(body, state.ctx.runtime.registry)
    nxt = layer + 1
    if strategy(body) == "chain":
        steps = chain_steps(synth, answered, nxt)
    else:
        steps = [Step(key="Y", model=synth, role="synthesizer", layer=nxt, prompt="synthesis",
                      inputs=answered)]
    started = layer_event(nxt, "started", "synthesizer", models=[synth], steps=len(steps))
    return Stage("synthesis", steps, sequential=True, events=[started])


def chain_steps(synth: str, answered: list[str], layer: int) -> list[Step]:
    """Step i folds answer i+1 into the running answer (answer 1, then each step's own)."""
    total = max(1, len(answered) - 1)
    steps = []
    for i in range(1, total + 1):
        running = [answered[0], *(f"Y{j}" for j in range(1, i))]
        nxt = answered[i : i + 1]
        steps.append(Step(key=f"Y{i}", model=synth, role="synthesizer", layer=layer,
                          prompt="chain", inputs=nxt, running=running, tags={"step": i},
                          params={"steps": total}))
    return steps


def _synthesis_keys(state: PipeState) -> list[str]:
    keys = [k for k, r in state.records.items() if r.get("role") == "synthesizer"]
    return sorted(keys, key=lambda k: state.records[k].get("step") or 0)


def after_synthesis(state: PipeState) -> Outcome:
    keys = _synthesis_keys(state)
    answered = state.answered(keys)
    layer = layer_count(state.body) + 1
    state.publish(layer_event(layer, "done", "synthesizer", answered=len(answered),
                              failed=len(keys) - len(answered)))
    if not answered:
        error = {"code": "upstream_error", "http_status": 502,
                 "message": "the synthesizer failed"}
        return Outcome("failed", result=blend_result(state, None), error=error)
    # chain: the last step that answered holds the fully folded answer.
    return Outcome("succeeded", result=blend_result(state, answered[-1]))


def blend_result(state: PipeState, final: Record | None) -> dict[str, Any]:
    """The synthesised answer's fields, the strategy and every other call's summary."""
    others = []
    for layer in range(1, layer_count(state.body) + 1):
        others += [call_summary(state.records[k]) for k in _layer_keys(state, layer)]
    others += [call_summary(state.records[k]) for k in _synthesis_keys(state)
               if final is None or k != final["key"]]
    head = call_summary(final) if final is not None else {}
    return {**head, "strategy": strategy(state.body), "answers": others}


register_kind("blend", advance_blend, lambda state: blend_result(state, None))


# --- the requests each step sends -------------------------------------------------------


def _texts(step: Step, quoted: dict[str, Record]) -> list[str]:
    return [quoted[k].get("text", "") for k in step.inputs if k in quoted]


@builder("candidate")
def plain_answer(body: dict[str, Any], _step: Step, _quoted: dict[str, Record],
                 _model: ModelSpec) -> ChatCall:
    # Candidates answer in words for the synthesiser; the response format is the final's.
    call = request_call(body, tools=False)
    call.response_format = None
    return call


@builder("moa_layer")
def _moa_layer(body: dict[str, Any], step: Step, quoted: dict[str, Record],
               model: ModelSpec) -> ChatCall:
    call = plain_answer(body, step, quoted, model)
    call.messages = prompts.moa_layer(body["messages"], _texts(step, quoted))
    return call


@builder("self_moa_sample")
def _self_moa_sample(body: dict[str, Any], step: Step, quoted: dict[str, Record],
                     model: ModelSpec) -> ChatCall:
    call = plain_answer(body, step, quoted, model)
    call.messages = prompts.self_moa_sample(body["messages"], int(step.tags["sample"]))
    return call


@builder("synthesis")
def _synthesis(body: dict[str, Any], step: Step, quoted: dict[str, Record],
               _model: ModelSpec) -> ChatCall:
    call = request_call(body, tools=False)
    call.messages = prompts.synthesis(strategy(body), body["messages"], _texts(step, quoted))
    return call


@builder("chain")
def _chain(body: dict[str, Any], step: Step, quoted: dict[str, Record],
           _model: ModelSpec) -> ChatCall:
    running = [quoted[k] for k in step.running if k in quoted and not quoted[k].get("error")
               and not quoted[k].get("cancelled")]
    current = running[-1].get("text", "") if running else ""
    nxt = _texts(step, quoted)
    call = request_call(body, tools=False)
    call.messages = prompts.chain_step(body["messages"], current, nxt[0] if nxt else None,
                                       int(step.tags["step"]), int(step.params["steps"]))
    return call
