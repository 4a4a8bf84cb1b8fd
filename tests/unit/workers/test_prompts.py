"""The pipelines' prompt templates, and the reservation allowances that must cover them."""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from shared import plans, pricing
from shared.registry import Registry, load_registry
from shared.settings import PACKAGE_DIR
from workers import prompts
from workers.blend import chain_steps, temperatures
from workers.providers.base import estimate_tokens, messages_text

CONVO: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "Why is the sky blue?"}]
ANSWERS = ["Rayleigh scattering of $HOME {braces}.", "Because of the atmosphere."]


def _system(messages: list[dict[str, Any]]) -> str:
    assert messages[0]["role"] == "system"
    return str(messages[0]["content"])


@pytest.mark.parametrize("strategy", sorted(prompts.STRATEGIES))
def test_synthesis_quotes_every_answer_and_keeps_the_conversation(strategy: str) -> None:
    out = prompts.synthesis(strategy, CONVO, ANSWERS)
    text = _system(out)
    # Answers are quoted verbatim: no template syntax leaks or breaks on $ and braces.
    for i, answer in enumerate(ANSWERS, 1):
        assert f'<answer n="{i}">\n{answer}\n</answer>' in text
    assert "$" not in prompts.STRATEGIES[strategy].template.replace("$answers", "")
    assert out[1:] == CONVO
    assert out[-1]["role"] == "user"


def test_each_strategy_has_its_own_instructions() -> None:
    texts = {s: _system(prompts.synthesis(s, CONVO, ANSWERS)) for s in prompts.STRATEGIES}
    assert len(set(texts.values())) == len(texts)
    assert "## Disagreements" in texts["council"]
    assert "Pick the best" in texts["best_of"]
    assert "Responses from models" in texts["moa"]


def test_moa_layer_shows_the_previous_layer() -> None:
    out = prompts.moa_layer(CONVO, ["layer one said this"])
    assert "layer one said this" in _system(out)
    assert out[1:] == CONVO


def test_chain_step_folds_one_candidate_into_the_running_answer() -> None:
    text = _system(prompts.chain_step(CONVO, "running answer", "next answer", 2, 3))
    assert "step 2 of 3" in text
    assert text.index("running answer") < text.index("next answer")
    alone = _system(prompts.chain_step(CONVO, "only answer", None, 1, 1))
    assert prompts.CHAIN_ALONE in alone


def test_chain_steps_take_each_answer_once_in_order() -> None:
    steps = chain_steps("synth", ["a", "b", "c"], 2)
    assert [s.key for s in steps] == ["Y1", "Y2"]
    assert [s.inputs for s in steps] == [["b"], ["c"]]
    assert [s.running for s in steps] == [["a"], ["a", "Y1"]]
    assert all(s.layer == 2 and s.params["steps"] == 2 for s in steps)
    (alone,) = chain_steps("synth", ["a"], 2)
    assert alone.inputs == [] and alone.running == ["a"]


def test_self_moa_samples_get_different_agent_prompts() -> None:
    systems = [_system(prompts.self_moa_sample(CONVO, i)) for i in range(1, 9)]
    assert len(set(systems)) == 8
    assert _system(prompts.self_moa_sample(CONVO, 9)) == systems[0]


def test_temperatures_spread_evenly_from_low_to_high() -> None:
    assert temperatures(2) == [0.3, 1.2]
    for n in range(2, 9):
        temps = temperatures(n)
        assert len(temps) == n and temps[0] == 0.3 and temps[-1] == 1.2
        gaps = [round(b - a, 3) for a, b in pairwise(temps)]
        assert all(g > 0 for g in gaps) and max(gaps) - min(gaps) < 0.002


def test_judge_sees_labels_not_model_names() -> None:
    out = prompts.judge(CONVO, ANSWERS, None)
    system, user = str(out[0]["content"]), str(out[1]["content"])
    assert [m["role"] for m in out] == ["system", "user"]
    assert '<answer label="A">' in user and '<answer label="B">' in user
    assert "Why is the sky blue?" in user and "System: You are terse." in user
    assert prompts.DEFAULT_CRITERIA in system and "(A, B)" in system
    assert '"scores"' in system and "JSON" in system
    custom = str(prompts.judge(CONVO, ANSWERS, "brevity only")[0]["content"])
    assert "brevity only" in custom and prompts.DEFAULT_CRITERIA not in custom


def test_judge_reask_quotes_the_unusable_reply() -> None:
    first = prompts.judge(CONVO, ANSWERS, None)
    out = prompts.judge_reask(first, "Sure! A is best.", "the reply holds no JSON object", 2)
    assert out[:2] == first
    assert out[2] == {"role": "assistant", "content": "Sure! A is best."}
    assert "the reply holds no JSON object" in str(out[3]["content"])
    assert "A, B" in str(out[3]["content"])


def _overhead(messages: list[dict[str, Any]], base: list[dict[str, Any]]) -> int:
    return estimate_tokens(messages_text(messages)) - estimate_tokens(messages_text(base))


def test_templates_fit_the_reservation_allowance() -> None:
    """The credit hold adds TEMPLATE_TOKENS per orchestrated call and ANSWER_FRAME_TOKENS
    per quoted answer; no template may need more, or a job could cost more than its hold."""
    empty = [""] * 6
    built = [prompts.synthesis(s, CONVO, empty) for s in prompts.STRATEGIES]
    built.append(prompts.chain_step(CONVO, "", None, 8, 8))
    built += [prompts.self_moa_sample(CONVO, i) for i in range(1, 9)]
    for messages in built:
        assert _overhead(messages, CONVO) <= plans.TEMPLATE_TOKENS - 6 * plans.ANSWER_FRAME_TOKENS
    first = prompts.judge(CONVO, empty[:4], None)
    again = prompts.judge_reask(first, "", "x" * 200, 4)
    assert _overhead(first, CONVO) <= plans.TEMPLATE_TOKENS
    assert _overhead(again, CONVO) <= 2 * plans.TEMPLATE_TOKENS
    frame = estimate_tokens(prompts.answers_block(["x"], ["A"])) - estimate_tokens("x")
    assert frame <= plans.ANSWER_FRAME_TOKENS


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(Path(PACKAGE_DIR) / "models.toml")


def _plan(kind: str, body: dict[str, object], registry: Registry) -> list[pricing.PlannedCall]:
    return pricing.plan_calls(kind, {"messages": CONVO, **body}, registry)


def test_plans_cover_every_call_the_pipelines_make(registry: Registry) -> None:
    judge = _plan("judge", {"contestants": ["gpt-5-mini", "gemini-3-flash"],
                            "judge": "gpt-5.2"}, registry)
    # Two contestants, the judge, and the judge asked once more after a malformed verdict.
    assert [c.model.id for c in judge] == ["gpt-5-mini", "gemini-3-flash", "gpt-5.2", "gpt-5.2"]
    assert judge[3].prompt_tokens > judge[2].prompt_tokens > judge[0].prompt_tokens
    moa = _plan("blend", {"models": ["gpt-5-mini", "gemini-3-flash"], "strategy": "moa",
                          "layers": 3}, registry)
    assert len(moa) == 3 * 2 + 1
    chain = _plan("blend", {"models": ["gpt-5-mini", "gemini-3-flash", "deepseek-v3.2"],
                            "strategy": "chain"}, registry)
    assert len(chain) == 3 + 2
    self_moa = _plan("blend", {"models": ["deepseek-v3.2"], "strategy": "self_moa"}, registry)
    assert len(self_moa) == plans.DEFAULT_SAMPLES + 1
    # self_moa aggregates with its own model unless a synthesizer is named.
    assert {c.model.id for c in self_moa} == {"deepseek-v3.2"}
    assert pricing.reservation("blend", self_moa) > Decimal(4)
