"""Call plans for blend and judge jobs (their pipelines have several stages).

The plan must cover every call the worker's pipeline may make (``workers/blend.py``,
``workers/judge.py``), so the few choices both sides need (how many samples self_moa
takes by default, who synthesises) live here, and the workers import them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.registry import ModelSpec, Registry

CallFactory = Callable[..., Any]

DEFAULT_SAMPLES = 4
# Prompt tokens the pipeline templates add around the user's conversation (instructions,
# the judge's JSON format) and around each answer they quote; the prompt unit tests check
# every template in workers/prompts.py stays within these.
TEMPLATE_TOKENS = 400
ANSWER_FRAME_TOKENS = 16


def synthesizer_id(body: dict[str, Any], registry: Registry) -> str:
    """The synthesiser: the request's, else self_moa's own model, else the registry default."""
    if body.get("synthesizer"):
        return str(body["synthesizer"])
    if body.get("strategy") == "self_moa":
        return str(body["models"][0])
    return str(registry.defaults.get("synthesizer", ""))


def _estimate(text: str) -> int:
    return 0 if not text else max(1, (len(text) + 3) // 4)


def _quoted(calls: list[Any]) -> int:
    """Prompt tokens of a prompt quoting every answer of ``calls`` at its held length."""
    return TEMPLATE_TOKENS + sum(c.output_tokens + ANSWER_FRAME_TOKENS for c in calls)


def plan_orchestration(
    kind: str, body: dict[str, Any], registry: Registry, call: CallFactory
) -> list[Any]:
    if kind == "judge":
        return _judge(body, registry, call)
    if kind == "blend":
        return _blend(body, registry, call)
    raise ValueError(f"unknown job kind {kind!r}")


def _judge(body: dict[str, Any], registry: Registry, call: CallFactory) -> list[Any]:
    contestants = [call(registry.get(m)) for m in body["contestants"]]
    judge = registry.get(body["judge"])
    shown = _quoted(contestants) + _estimate(str(body.get("criteria") or ""))
    first = call(judge, extra_prompt=shown)
    # A malformed verdict is asked for again once, with the unusable reply quoted.
    again = call(judge, extra_prompt=shown + first.output_tokens + TEMPLATE_TOKENS)
    return [*contestants, first, again]


def _blend(body: dict[str, Any], registry: Registry, call: CallFactory) -> list[Any]:
    models: list[ModelSpec] = [registry.get(m) for m in body["models"]]
    synth = registry.get(synthesizer_id(body, registry))
    strategy = body.get("strategy", "consensus")
    if strategy == "self_moa":
        count = body.get("samples") or DEFAULT_SAMPLES
        samples = [call(models[0], extra_prompt=TEMPLATE_TOKENS) for _ in range(count)]
        return [*samples, call(synth, extra_prompt=_quoted(samples))]
    layers = (body.get("layers") or 1) if strategy == "moa" else 1
    out: list[Any] = []
    previous: list[Any] = []
    for _ in range(layers):
        extra = _quoted(previous) if previous else 0
        previous = [call(m, extra_prompt=extra) for m in models]
        out += previous
    if strategy == "chain":
        # Each step sees the running answer (a candidate's or the synthesiser's) and the
        # next candidate; n answers take n - 1 steps (one step when a single answer came).
        widest = max(c.output_tokens for c in previous)
        running = max(widest, call(synth).output_tokens)
        steps = max(1, len(models) - 1)
        extra = TEMPLATE_TOKENS + running + widest + 2 * ANSWER_FRAME_TOKENS
        out += [call(synth, extra_prompt=extra) for _ in range(steps)]
    else:
        out.append(call(synth, extra_prompt=_quoted(previous)))
    return out
