"""Worst-case call plans for blend and judge jobs (their pipelines have several stages)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.registry import ModelSpec, Registry

CallFactory = Callable[..., Any]


def plan_orchestration(
    kind: str, body: dict[str, Any], registry: Registry, call: CallFactory
) -> list[Any]:
    if kind == "judge":
        contestants = [call(registry.get(m)) for m in body["contestants"]]
        answers = sum(c.max_output for c in contestants)
        return [*contestants, call(registry.get(body["judge"]), extra_prompt=answers)]
    if kind == "blend":
        return _blend(body, registry, call)
    raise ValueError(f"unknown job kind {kind!r}")


def _blend(body: dict[str, Any], registry: Registry, call: CallFactory) -> list[Any]:
    models: list[ModelSpec] = [registry.get(m) for m in body["models"]]
    synth = registry.get(body.get("synthesizer") or registry.defaults.get("synthesizer", ""))
    strategy = body.get("strategy", "consensus")
    if strategy == "self_moa":
        samples = [call(models[0]) for _ in range(body.get("samples") or 4)]
        return [*samples, call(synth, extra_prompt=sum(c.max_output for c in samples))]
    layers = (body.get("layers") or 1) if strategy == "moa" else 1
    out: list[Any] = []
    previous = 0
    for _ in range(layers):
        layer = [call(m, extra_prompt=previous) for m in models]
        previous = sum(c.max_output for c in layer)
        out += layer
    if strategy == "chain":
        # Each fold sees the running answer and one more candidate answer.
        out += [call(synth, extra_prompt=2 * c.max_output) for c in out[: len(models)]]
    else:
        out.append(call(synth, extra_prompt=previous))
    return out
