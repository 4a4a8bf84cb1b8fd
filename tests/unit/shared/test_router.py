"""The auto router: rule conditions, order, reasons, config errors and the shipped table."""

from __future__ import annotations

from typing import Any

import pytest

from shared.registry import Registry, RegistryError, get_registry, parse_registry
from shared.router import build_router, find_math, get_router, measure


def registry(rules: list[dict[str, Any]], **table: Any) -> Registry:
    return parse_registry({
        "defaults": {"auto": "cheap"},
        "providers": {"p": {"adapter": "openai", "base_url": "http://x.invalid"}},
        "models": {m: {"provider": "p"} for m in ("cheap", "coder", "thinker", "writer", "big")},
        "routing": {"rules": rules, **table},
    })


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_first_matching_rule_wins_and_reports_why() -> None:
    r = build_router(registry([
        {"name": "code", "model": "coder", "reason": "code", "code_fence": True,
         "keywords": ["python", "stack trace"]},
        {"name": "math", "model": "thinker", "math": True, "keywords": ["prove"]},
    ]))
    d = r.route(user("Why does this fail?\n```\nx = 1\n```"))
    assert (d.model, d.rule, d.reason) == ("coder", "code", "code: code fence")
    assert r.route(user("In Python, prove it")).model == "coder"
    assert r.route(user("Here is my stack   trace, help")).reason == "code: keyword 'stack trace'"
    d = r.route(user("Prove that there are infinitely many primes."))
    assert (d.model, d.reason) == ("thinker", "math: keyword 'prove'")
    d = r.route(user("Tell me about owls."))
    assert (d.model, d.rule) == ("cheap", "default")


def test_keywords_match_whole_words_only() -> None:
    r = build_router(registry([{"model": "coder", "keywords": ["git", "c++"]}]))
    assert r.route(user("I love digital art")).model == "cheap"
    assert r.route(user("How do I rebase in git?")).model == "coder"
    assert r.route(user("Is C++, or Rust, faster?")).model == "coder"


def test_patterns_and_math_notation() -> None:
    r = build_router(registry([
        {"model": "coder", "pattern": [r"def \w+\(", r"\)\s*[{;]"]},
        {"model": "thinker", "math": True},
    ]))
    assert r.route(user("what does def parse(x): do")).model == "coder"
    assert r.route(user("if (x > 1) { y(); }")).reason.startswith("rule1: pattern")
    assert r.route(user("Solve 3x + 5 = 20")).model == "thinker"
    assert r.route(user("what is ∫ sin")).model == "thinker"
    assert r.route(user("GPT-4 and covid-19 in a well-known paper")).model == "cheap"


def test_find_math() -> None:
    assert find_math("3x + 5") == "3x + 5"
    assert find_math("x^2") == "^2"
    assert find_math("\\frac{1}{2}") == "\\frac"
    assert find_math("2 * (3") is not None
    for text in ("GPT-4", "covid-19", "well-known", "1999 and 2000", "a - b"):
        assert find_math(text) is None, text


def test_bounds_length_tokens_turns() -> None:
    r = build_router(registry([
        {"name": "long", "model": "big", "min_tokens": 1000},
        {"name": "deep", "model": "thinker", "min_turns": 6},
        {"name": "short", "model": "writer", "max_chars": 10},
    ]))
    assert r.route(user("x" * 5000)).reason == "long: 1254 tokens ≥ 1000"
    convo = [{"role": "system", "content": "be nice"}]
    convo += [{"role": "user" if i % 2 == 0 else "assistant", "content": "more text here"}
              for i in range(6)]
    assert r.route(convo).reason == "deep: 6 turns ≥ 6"
    assert r.route(convo[:6]).model == "cheap"  # the system message is not a turn
    assert r.route(user("hi")).reason == "short: 2 chars ≤ 10"


def test_bounds_and_signals_combine() -> None:
    # Bounds all hold AND one signal fires.
    r = build_router(registry([
        {"model": "writer", "max_chars": 40, "keywords": ["poem", "haiku"]},
    ]))
    assert r.route(user("a haiku please")).model == "writer"
    assert r.route(user("a haiku please " + "about the sea " * 5)).model == "cheap"
    assert r.route(user("a limerick please")).model == "cheap"


def test_script_detection() -> None:
    r = build_router(registry([{"model": "writer", "script": ["cjk"]},
                               {"model": "thinker", "script": "cyrillic"}]))
    assert r.route(user("请解释量子计算的基本原理")).reason == "rule1: cjk script"
    assert r.route(user("Привет, как дела?")).model == "thinker"
    assert r.route(user("Hello, 世界")).model == "writer"
    assert r.route(user("Hello there, how are you doing today, 好")).model == "cheap"


def test_reads_the_last_user_message_and_only_its_head_and_tail() -> None:
    r = build_router(registry([{"model": "coder", "keywords": ["python"]}], scan_chars=100))
    convo = [*user("python please"), {"role": "assistant", "content": "sure"},
             *user("thanks")]
    assert r.route(convo).model == "cheap"
    middle = "a " * 200 + "python " + "b " * 200
    assert r.route(user(middle)).model == "cheap"
    assert r.route(user("python " + "b " * 400)).model == "coder"
    assert r.route(user("b " * 400 + "python")).model == "coder"
    parts = [{"role": "user", "content": [{"type": "text", "text": "python now"}]}]
    assert r.route(parts).model == "coder"


def test_measure_is_bounded_by_scan_chars() -> None:
    f = measure(user("x" * 1_000_000), 1000)
    assert f.chars == 1_000_000 and len(f.text) == 1001
    assert f.tokens == 250_004


@pytest.mark.parametrize(("rules", "table", "message"), [
    ([{"model": "nope", "keywords": ["a"]}], {}, "unknown model 'nope'"),
    ([{"model": "coder"}], {}, "no condition"),
    ([{"model": "coder", "keywords": "python"}], {}, "keywords must be a list"),
    ([{"model": "coder", "pattern": "(unclosed"}], {}, "bad pattern"),
    ([{"model": "coder", "min_chars": -1}], {}, "non-negative integer"),
    ([{"model": "coder", "script": ["klingon"]}], {}, "script must be among"),
    ([{"model": "coder", "math": "yes"}], {}, "math must be true or false"),
    ([{"model": "coder", "keyword": ["x"]}], {}, "unknown keys keyword"),
    ([], {"scan_chars": 10}, "scan_chars"),
    ([], {"colour": "red"}, "unknown keys colour"),
])
def test_bad_config_fails_at_load(rules: list[dict[str, Any]], table: dict[str, Any],
                                  message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        build_router(registry(rules, **table))


def test_router_is_compiled_once_per_registry() -> None:
    reg = registry([{"model": "coder", "keywords": ["python"]}])
    assert get_router(reg) is get_router(reg)


@pytest.mark.parametrize(("text", "model", "rule"), [
    ("hi!", "claude-haiku-4.5", "short"),
    ("Refactor this Python class to use dataclasses and add type hints, please.",
     "claude-sonnet-4.5", "code"),
    ("My loop never ends:\n```js\nwhile (true) {}\n```", "claude-sonnet-4.5", "code"),
    ("A train leaves at 3pm going 60 mph; when does it arrive? Solve it step by step.",
     "gpt-5.2", "math"),
    ("Write me a short poem about autumn leaves falling on a quiet river.",
     "llama-3.3-70b", "creative"),
    ("请帮我写一封给房东的邮件说明热水器坏了需要维修。", "deepseek-v3.2", "cjk"),
    ("Summarise the main causes of the French Revolution for a history class.",
     "gpt-5-mini", "default"),
])
def test_shipped_routing_table(text: str, model: str, rule: str) -> None:
    d = get_router(get_registry()).route(user(text))
    assert (d.model, d.rule) == (model, rule), d.reason


def test_shipped_table_routes_long_inputs_by_size() -> None:
    r = get_router(get_registry())
    assert r.route(user("word " * 100_000)).rule == "long_context"
    convo = [{"role": "user" if i % 2 == 0 else "assistant",
              "content": "Tell me more about that history."} for i in range(30)]
    assert r.route(convo).rule == "long_conversation"
