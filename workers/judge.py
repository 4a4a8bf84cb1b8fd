"""Judge: contestants answer in parallel (a chord); the judge, its body, scores and ranks them.

The judge sees the answers under neutral labels (A, B, C…) in an order shuffled with the
job id as seed: no model names, less position bias, and the same job always gets the same
order. It must reply with strict JSON; an unusable reply is repaired (the JSON object is
cut out of any surrounding text, trailing commas dropped) or asked for once more, then the
job fails with ``malformed_verdict``.

Ranking: higher score ranks first; equal scores are ordered by the contestants' order in
the request (a stable sort), so every contestant gets a distinct rank 1..n. A contestant
that failed to answer is not shown to the judge: it gets ``score: null``, a reason saying
why, and the ranks after every scored contestant (in request order).
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any

from shared.registry import ModelSpec
from workers import prompts
from workers.blend import plain_answer
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
)

MAX_REASON = 500


class VerdictError(ValueError):
    """The judge's reply is not a usable verdict; the message says what is wrong."""


@dataclass(frozen=True)
class Verdict:
    scores: dict[str, tuple[float, str]]  # label -> (score, reason)
    repaired: bool


# --- parsing and ranking (plain functions) ----------------------------------------------


def json_objects(text: str) -> list[tuple[dict[str, Any], bool]]:
    """Every JSON object in ``text``, largest first, each with whether it needed repair.

    Repairs: cutting the object out of prose or code fences, dropping trailing commas.
    """
    try:
        whole = json.loads(text.strip())
        if isinstance(whole, dict):
            return [(whole, False)]
    except ValueError:
        pass
    found: list[tuple[int, dict[str, Any]]] = []
    decoder = json.JSONDecoder()
    for source in (text, re.sub(r",\s*([}\]])", r"\1", text)):
        for match in re.finditer(r"\{", source):
            try:
                obj, end = decoder.raw_decode(source, match.start())
            except ValueError:
                continue
            if isinstance(obj, dict):
                found.append((end - match.start(), obj))
    found.sort(key=lambda item: -item[0])
    return [(obj, True) for _size, obj in found]


def _label(raw: Any) -> str:
    text = str(raw).strip().strip("[]()<>\"' ").upper()
    return re.sub(r"^(ANSWER|RESPONSE|CONTESTANT|LABEL)\s*", "", text)


def _score(label: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise VerdictError(f"the score of {label} is not a number")
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise VerdictError(f"the score of {label} is not a number") from exc
    if math.isnan(value) or not 0 <= value <= 10:
        raise VerdictError(f"the score of {label} ({raw}) is outside 0-10")
    return value


def _entries(obj: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(label, entry) pairs from the asked-for list form or a label -> entry mapping."""
    raw = obj.get("scores", obj)
    if isinstance(raw, list):
        return [(e.get("label", e.get("answer")), e) for e in raw if isinstance(e, dict)]
    if isinstance(raw, dict):
        return list(raw.items())
    raise VerdictError('"scores" is neither a list nor an object')


def read_verdict(obj: dict[str, Any], labels: list[str]) -> dict[str, tuple[float, str]]:
    scores: dict[str, tuple[float, str]] = {}
    for raw_label, entry in _entries(obj):
        label = _label(raw_label)
        if label not in labels or label in scores:
            continue
        if isinstance(entry, dict):
            score, reason = entry.get("score"), entry.get("reason", "")
        else:
            score, reason = entry, ""
        scores[label] = (_score(label, score), str(reason or "").strip()[:MAX_REASON])
    missing = [lbl for lbl in labels if lbl not in scores]
    if missing:
        raise VerdictError(f"no score for {', '.join(missing)}")
    return scores


def parse_verdict(text: str, labels: list[str]) -> Verdict:
    """Scores by label from the judge's reply, repairing what can be repaired."""
    objects = json_objects(text)
    if not objects:
        raise VerdictError("the reply holds no JSON object")
    problem = None
    for obj, repaired in objects:
        try:
            return Verdict(read_verdict(obj, labels), repaired)
        except VerdictError as exc:
            problem = problem or exc
    assert problem is not None
    raise problem


def rank(contestants: list[str], scored: dict[str, tuple[float, str]],
         failed: dict[str, str]) -> list[dict[str, Any]]:
    """Scores in rank order: by score, ties by request order; failed contestants last."""
    order = {m: i for i, m in enumerate(contestants)}
    ranked = sorted(scored, key=lambda m: (-scored[m][0], order[m]))
    out: list[dict[str, Any]] = [
        {"model": m, "score": _number(scored[m][0]), "rank": i, "reason": scored[m][1]}
        for i, m in enumerate(ranked, 1)
    ]
    for m in sorted(failed, key=order.__getitem__):
        out.append({"model": m, "score": None, "rank": len(out) + 1, "reason": failed[m]})
    return out


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else round(value, 2)


def shuffled(models: list[str], seed: str) -> list[str]:
    """The order the judge sees the answers in: shuffled, reproducible per job."""
    out = list(models)
    random.Random(seed).shuffle(out)
    return out


# --- the pipeline -----------------------------------------------------------------------


def _key(model: str) -> str:
    return f"C:{model}"


@handler("judge")
def run_judge(ctx: JobContext, spec: JobSpec) -> None:
    steps = [Step(key=_key(m), model=m, role="contestant", prompt="contestant")
             for m in spec.body["contestants"]]
    start(ctx, spec, Stage("contestants", steps))


def _answered(state: PipeState) -> list[str]:
    return [m for m in state.body["contestants"]
            if (r := state.records.get(_key(m))) is not None and is_ok(r)]


def _judge_step(state: PipeState, attempt: int, problem: str = "") -> Step:
    order = shuffled(_answered(state), state.spec.id)
    if attempt == 1:
        return Step(key="J1", model=state.body["judge"], role="judge", prompt="judge",
                    inputs=[_key(m) for m in order], temperature=0.0)
    return Step(key=f"J{attempt}", model=state.body["judge"], role="judge",
                prompt="judge_reask", inputs=[_key(m) for m in order], running=["J1"],
                temperature=0.0, tags={"attempt": attempt}, params={"problem": problem})


def advance_judge(state: PipeState, stage: str) -> Stage | Outcome:
    if stage == "contestants":
        if not _answered(state):
            error = {"code": "upstream_error", "http_status": 502,
                     "message": "every contestant failed"}
            return Outcome("failed", result=judge_result(state), error=error)
        return Stage("verdict:1", [_judge_step(state, 1)], sequential=True)
    attempt = int(stage.partition(":")[2])
    rec = state.records.get(f"J{attempt}")
    if rec is None or not is_ok(rec):
        error = {"code": "upstream_error", "http_status": 502, "message": "the judge failed"}
        return Outcome("failed", result=judge_result(state), error=error)
    order = shuffled(_answered(state), state.spec.id)
    labels = prompts.labels(len(order))
    try:
        verdict = parse_verdict(rec.get("text", ""), labels)
    except VerdictError as exc:
        if attempt == 1:
            state.publish({"event": "error", "model": rec["model"], "role": "judge",
                           "error": {"code": "malformed_verdict", "message": str(exc)},
                           "retrying": True})
            return Stage("verdict:2", [_judge_step(state, 2, str(exc))], sequential=True)
        error = {"code": "malformed_verdict", "http_status": 502,
                 "message": f"the judge's verdict was unusable after one re-ask: {exc}"}
        return Outcome("failed", result=judge_result(state), error=error)
    scored = {m: verdict.scores[lbl] for lbl, m in zip(labels, order, strict=True)}
    failed = {}
    for m in state.body["contestants"]:
        if m not in scored:
            code = ((state.records.get(_key(m)) or {}).get("error") or {}).get("code")
            failed[m] = f"no answer ({code or 'not_run'})"
    scores = rank(list(state.body["contestants"]), scored, failed)
    for s in scores:
        state.publish({"event": "score", **s})
    result = judge_result(state)
    result.update(scores=scores, labels=dict(zip(labels, order, strict=True)),
                  verdict={"model": rec["model"], "attempts": attempt,
                           "repaired": verdict.repaired})
    return Outcome("succeeded", result=result)


def judge_result(state: PipeState) -> dict[str, Any]:
    answers = []
    for m in state.body["contestants"]:
        rec = state.records.get(_key(m))
        answers.append(call_summary(rec) if rec is not None
                       else missing_summary(m, role="contestant"))
    return {"answers": answers}


register_kind("judge", advance_judge, judge_result)


# --- the requests each step sends -------------------------------------------------------


# Contestants answer in words, like blend candidates.
builder("contestant")(plain_answer)


@builder("judge")
def _judge(body: dict[str, Any], step: Step, quoted: dict[str, Record],
           model: ModelSpec) -> ChatCall:
    answers = [quoted[k].get("text", "") for k in step.inputs if k in quoted]
    # JSON mode where the model has it; the prompt asks for strict JSON either way.
    fmt = {"type": "json_object"} if model.supports("json_mode") else None
    return ChatCall(messages=prompts.judge(body["messages"], answers, body.get("criteria")),
                    max_tokens=body.get("max_tokens"), temperature=0.0, response_format=fmt)


@builder("judge_reask")
def _judge_reask(body: dict[str, Any], step: Step, quoted: dict[str, Record],
                 model: ModelSpec) -> ChatCall:
    call = _judge(body, step, quoted, model)
    reply = quoted.get("J1", {}).get("text", "")
    call.messages = prompts.judge_reask(call.messages, reply, str(step.params["problem"]),
                                        len(step.inputs))
    return call
