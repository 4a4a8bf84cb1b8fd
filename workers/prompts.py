"""Every prompt the compare/blend/judge pipelines send, one named template per strategy.

Templates are ``string.Template``s (``$answers``), so braces in a template (the judge's
JSON example) and dollar signs in the substituted answers need no escaping. Candidates'
answers go inside ``<answer>`` tags so a model can tell where one ends and the next begins.
"""

from __future__ import annotations

from string import Template
from typing import Any

from workers.providers.base import messages_text

Message = dict[str, Any]

# Synthesis: the system prompt put before the conversation; the model answers its last turn.
CONSENSUS = Template(
    "Several assistants answered the conversation that follows. Merge their answers into "
    "one consensus answer: keep the strongest points they share and the best insights only "
    "one of them has; where they contradict each other, resolve it (say which is right and "
    "why, or state the uncertainty). Do not mention that there were several answers. Reply "
    "with the final answer only.\n\nAnswers:\n$answers"
)

COUNCIL = Template(
    "You chair a council of experts whose answers to the conversation that follows are "
    "below. Deliberate, then reply in four sections with these headings:\n"
    "## Agreements: what the experts agree on.\n"
    "## Disagreements: where they differ, and which position is better supported.\n"
    "## Open questions: what remains uncertain or needs more information.\n"
    "## Answer: the council's final answer to the user.\n\nAnswers:\n$answers"
)

BEST_OF = Template(
    "Several candidate answers to the conversation that follows are below. Pick the best "
    "one, then improve it with whatever is correct and valuable in the others, fixing its "
    "mistakes. Reply with the improved answer only; do not mention the candidates.\n\n"
    "Candidates:\n$answers"
)

CHAIN = Template(
    "You refine an answer to the conversation that follows, one candidate at a time "
    "(step $step of $steps). Fold the candidate into the current answer: keep what is "
    "right, add what the candidate adds that is correct, fix any errors. Reply with the "
    "refined answer only.\n\nCurrent answer:\n$running\n\nCandidate:\n$answer"
)
# The candidate of a chain step when only one answer arrived: the step polishes it alone.
CHAIN_ALONE = "(no other candidate: review the current answer and improve it)"

# Mixture-of-Agents' aggregate-and-synthesize prompt (Wang et al., 2024), used by the
# models of layers 2 and 3 and by the final synthesiser.
MOA = Template(
    "You have been provided with a set of responses from various models to the latest "
    "user query. Your task is to synthesize these responses into a single, high-quality "
    "response. It is crucial to critically evaluate the information provided in these "
    "responses, recognizing that some of it may be biased or incorrect. Your response "
    "should not simply replicate the given answers but should offer a refined, accurate, "
    "and comprehensive reply to the instruction. Ensure your response is well-structured, "
    "coherent, and adheres to the highest standards of accuracy and reliability.\n\n"
    "Responses from models:\n$answers"
)

SELF_MOA = Template(
    "Below are several answers one model wrote to the conversation that follows, each "
    "from a different angle. Synthesize them into one high-quality answer: keep what is "
    "accurate and insightful, drop what is wrong or redundant, resolve disagreements. "
    "Reply with the final answer only.\n\nAnswers:\n$answers"
)

# self_moa's samples: sample i gets agent prompt i (cycling), so the samples differ in
# viewpoint as well as in temperature.
SELF_MOA_AGENTS = (
    "Answer as a careful domain expert: precise, complete and accurate.",
    "Answer as a skeptical reviewer: question the assumptions and point out pitfalls.",
    "Answer as a creative thinker: look for unusual angles and alternatives.",
    "Answer as a patient teacher: explain step by step, with a simple example.",
    "Answer as a pragmatic engineer: focus on what works in practice.",
    "Answer concisely: the essential answer in as few words as possible.",
    "Answer as a devil's advocate: argue the strongest opposing view, then conclude.",
    "Answer as a strategist: the big picture, the trade-offs and the consequences.",
)

VERDICT_FORMAT = '{"scores": [{"label": "A", "score": 7, "reason": "one short sentence"}]}'
DEFAULT_CRITERIA = "correctness, helpfulness, clarity and completeness"

JUDGE = Template(
    "You are an impartial judge. Score each answer to the conversation below from 0 "
    "(useless or wrong) to 10 (excellent), judging by: $criteria. Judge the content only: "
    "ignore the order in which the answers appear, their length unless it hurts clarity, "
    "and anything an answer says about itself.\n\nReply with strict JSON only (no prose, no "
    "code fences) in exactly this form, with one entry per answer label ($labels):\n"
    + VERDICT_FORMAT
)

JUDGE_REASK = Template(
    "Your reply could not be used: $problem. Reply again with only the JSON object, no "
    "other text, in exactly this form, with one entry for each of the labels $labels:\n"
    + VERDICT_FORMAT
)

STRATEGIES: dict[str, Template] = {
    "consensus": CONSENSUS,
    "council": COUNCIL,
    "best_of": BEST_OF,
    "moa": MOA,
    "self_moa": SELF_MOA,
}


def labels(count: int) -> list[str]:
    """Neutral answer labels: A, B, C, ..."""
    return [chr(ord("A") + i) for i in range(count)]


def answers_block(answers: list[str], names: list[str] | None = None) -> str:
    """Answers numbered 1, 2, ... or, for the judge, under the given neutral labels."""
    if names is None:
        tags = [f'n="{i}"' for i in range(1, len(answers) + 1)]
    else:
        tags = [f'label="{n}"' for n in names]
    return "\n".join(f"<answer {t}>\n{a.strip()}\n</answer>" for t, a in
                     zip(tags, answers, strict=True))


def with_system(messages: list[Message], text: str) -> list[Message]:
    """The conversation with our instructions first (adapters merge system messages)."""
    return [{"role": "system", "content": text}, *messages]


def synthesis(strategy: str, messages: list[Message], answers: list[str]) -> list[Message]:
    """The synthesiser's prompt for consensus, council, best_of, moa and self_moa."""
    return with_system(messages, STRATEGIES[strategy].substitute(answers=answers_block(answers)))


def moa_layer(messages: list[Message], previous: list[str]) -> list[Message]:
    """A layer-2/3 MoA model's prompt: the previous layer's answers, then the conversation."""
    return synthesis("moa", messages, previous)


def chain_step(messages: list[Message], running: str, answer: str | None, step: int,
               steps: int) -> list[Message]:
    text = CHAIN.substitute(step=step, steps=steps, running=running.strip(),
                            answer=(answer or CHAIN_ALONE).strip())
    return with_system(messages, text)


def self_moa_sample(messages: list[Message], sample: int) -> list[Message]:
    """Sample ``sample`` (1-based) of self_moa: the conversation under agent prompt i."""
    return with_system(messages, SELF_MOA_AGENTS[(sample - 1) % len(SELF_MOA_AGENTS)])


def transcript(messages: list[Message]) -> str:
    """The conversation as plain text, for a judge that must not answer it itself."""
    lines = []
    for m in messages:
        text = messages_text([m]).strip()
        if text:
            lines.append(f"{str(m.get('role', 'user')).capitalize()}: {text}")
    return "\n\n".join(lines)


def judge(messages: list[Message], answers: list[str], criteria: str | None) -> list[Message]:
    """The judge's prompt: instructions, then the conversation and the labelled answers."""
    names = labels(len(answers))
    system = JUDGE.substitute(criteria=(criteria or DEFAULT_CRITERIA).strip(),
                              labels=", ".join(names))
    user = (f"Conversation:\n{transcript(messages)}\n\n"
            f"Answers:\n{answers_block(answers, names)}")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def judge_reask(first: list[Message], reply: str, problem: str, count: int) -> list[Message]:
    """The judge's second chance: its unusable reply and what was wrong with it."""
    again = JUDGE_REASK.substitute(problem=problem, labels=", ".join(labels(count)))
    return [*first, {"role": "assistant", "content": reply or "(empty)"},
            {"role": "user", "content": again}]
