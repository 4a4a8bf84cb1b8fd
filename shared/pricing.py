"""What a job is likely to cost, held before it runs; streaming calls extend the hold.

A call is held for its prompt and ``max_tokens`` when the request gives it, else for
the model's typical answer (``typical_output_tokens`` in the registry): a worst case
(the model's whole output limit) is about a hundred times a usual answer and would
refuse small wallets and session budgets. A call that outgrows its hold extends it as it
streams (``workers.meter``), never past ``output_cap``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal

from shared.credits import q
from shared.registry import ModelSpec, Registry

BASE_CREDITS: dict[str, Decimal] = {
    "chat": Decimal(1),
    "compare": Decimal(3),
    "blend": Decimal(4),
    "judge": Decimal(5),
}


def estimate_tokens(text: str) -> int:
    return 0 if not text else max(1, (len(text) + 3) // 4)


@dataclass(frozen=True)
class PlannedCall:
    model: ModelSpec
    prompt_tokens: int
    # Output tokens held for the call: ``max_tokens`` if given, else the typical answer.
    output_tokens: int

    def held_cost(self) -> Decimal:
        return self.model.cost(self.prompt_tokens, self.output_tokens)


def output_cap(model: ModelSpec, max_tokens: int | None) -> int:
    """The most a call may answer: ``max_tokens`` within the model's limit."""
    return min(max_tokens, model.max_output_tokens) if max_tokens else model.max_output_tokens


def expected_output(model: ModelSpec, max_tokens: int | None) -> int:
    """Output tokens held before a call runs: all of ``max_tokens`` when the request sets
    it (the caller chose that bound), else the model's typical answer."""
    if max_tokens:
        return output_cap(model, max_tokens)
    return min(model.typical_output_tokens, model.max_output_tokens)


def reservation(
    kind: str, calls: list[PlannedCall], own_providers: Collection[str] = ()
) -> Decimal:
    """Base credits plus the held token cost of every call not made on the account's own key."""
    total = BASE_CREDITS.get(kind, Decimal(1)) + sum(
        (c.held_cost() for c in calls if c.model.provider.name not in own_providers), Decimal(0)
    )
    return q(total)


def priciest(
    registry: Registry, model_ids: list[str] | None = None, own_providers: Collection[str] = ()
) -> ModelSpec:
    """The model with the highest output price; bounds ``auto`` before routing decides.

    Models on the account's own keys cost it no tokens, so they bound nothing unless
    every candidate is one."""
    pool = [registry.get(m) for m in model_ids] if model_ids else list(registry.models.values())
    pool = [m for m in pool if m.provider.name not in own_providers] or pool
    return max(pool, key=lambda m: (m.output_per_mtok, m.input_per_mtok))


def prompt_tokens(messages: list[dict[str, object]]) -> int:
    text = "\n".join(str(m.get("content") or "") for m in messages)
    # A few tokens per message for role and framing overhead.
    return estimate_tokens(text) + 4 * len(messages)


def plan_calls(
    kind: str, body: dict[str, object], registry: Registry, own_providers: Collection[str] = ()
) -> list[PlannedCall]:
    """Every model call a job may make, with what it is held for, from the validated body."""
    messages = body["messages"]
    assert isinstance(messages, list)
    p_tokens = prompt_tokens(messages)
    max_tokens = body.get("max_tokens")
    assert max_tokens is None or isinstance(max_tokens, int)

    def call(model: ModelSpec, extra_prompt: int = 0) -> PlannedCall:
        return PlannedCall(model, p_tokens + extra_prompt, expected_output(model, max_tokens))

    if kind == "chat":
        model_id = body["model"]
        routing = body.get("routing") or {}
        assert isinstance(routing, dict)
        fallback = [registry.get(m) for m in routing.get("fallback", [])]
        primary = (
            priciest(registry, own_providers=own_providers)
            if model_id == "auto" else registry.get(str(model_id))
        )
        calls = [call(primary)]
        # A fallback may be handed the partial answer of the call before it.
        calls += [call(m, extra_prompt=calls[-1].output_tokens) for m in fallback]
        return calls
    if kind == "compare":
        return [call(registry.get(m)) for m in body["models"]]  # type: ignore[attr-defined]
    from shared.plans import plan_orchestration

    return plan_orchestration(kind, body, registry, call)
