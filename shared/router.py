"""The ``auto`` router: cheap heuristics from the registry's ``[routing]`` table pick a model.

Rules are tried in order; the first that matches names the model, else ``defaults.auto``.
A rule matches when every *bound* it sets holds (``min_chars``/``max_chars`` on the last
user message, ``min_tokens``/``max_tokens`` on the whole conversation, ``min_turns``/
``max_turns`` on its message count) and, if it sets any *signal*, at least one signal
fires (``keywords``, ``pattern``, ``code_fence``, ``math``, ``script``). Signals read at
most ``scan_chars`` of the last user message (its head and tail), so a decision costs
microseconds whatever the request's size. Everything is compiled once, at load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.registry import Registry, RegistryError

DEFAULT_SCAN_CHARS = 1000
SCRIPT_SAMPLE_CHARS = 400
# A script "is the language" of a message when this share of its characters are in it.
SCRIPT_SHARE = 0.2

SCRIPTS: dict[str, str] = {
    "cjk": "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af",
    "cyrillic": "\u0400-\u04ff",
    "arabic": "\u0600-\u06ff",
    "hebrew": "\u0590-\u05ff",
    "greek": "\u0370-\u03ff",
    "devanagari": "\u0900-\u097f",
    "thai": "\u0e00-\u0e7f",
}
_SCRIPT_RES = {name: re.compile(f"[{chars}]") for name, chars in SCRIPTS.items()}

# Math notation, not vocabulary (words belong in a rule's keywords): symbols and LaTeX
# commands, or an operator between numbers (``2 * 3``, ``3x + 5``), not ``GPT-4``.
# Found with str.find and literal-led regexes, which run at C speed.
_MATH_SYMBOLS = "∫∑∏√π≤≥≠∞∂"
_MATH_MARKS = (re.compile(r"\\(?:frac|int|sum|sqrt|lim|cdot)\b"), re.compile(r"\^\d"))
_OPERATORS = "+*/\u00d7\u00f7=<>-"  # x-sign and division sign in the middle


# Keywords match whole words: punctuation becomes space, then words are split out once.
# ``+`` and ``#`` stay (``c++``, ``c#``).
# Plus typographic quotes and dashes, and CJK full-width punctuation.
_PUNCTUATION = (
    "!\"$%&'()*,-./:;<=>?@[\\]^`{|}~"
    "\u201c\u201d\u2018\u2019\u2013\u2014\u2026\u00ab\u00bb\u00bf\u00a1"
    "\u3002\uff0c\u3001\uff01\uff1f\uff1a\uff1b\uff08\uff09"
)
_WORDS = str.maketrans(dict.fromkeys(_PUNCTUATION, " "))


def find_math(text: str) -> str | None:
    """The first piece of math notation in ``text`` (``3x + 5``, ``x^2``, ``\\frac``, ``∫``)."""
    for symbol in _MATH_SYMBOLS:
        if symbol in text:
            return symbol
    for regex in _MATH_MARKS:
        if m := regex.search(text):
            return m.group(0)
    for op in _OPERATORS:
        i = text.find(op)
        while i != -1:
            if _between_numbers(text, i):
                return text[max(0, i - 3) : i + 3].strip()
            i = text.find(op, i + 1)
    return None


def _between_numbers(text: str, i: int) -> bool:
    after = text[i + 1 : i + 3].lstrip()
    if not after or not (after[0].isdigit() or after[0] == "("):
        return False
    before = text[max(0, i - 3) : i].rstrip()
    return bool(before) and (
        before[-1].isdigit()
        or before[-1] == ")"
        or (len(before) > 1 and before[-1].isalpha() and before[-2].isdigit())
    )


BOUNDS = ("min_chars", "max_chars", "min_tokens", "max_tokens", "min_turns", "max_turns")
SIGNALS = ("keywords", "pattern", "code_fence", "math", "script")
RULE_KEYS = frozenset({"name", "model", "reason", *BOUNDS, *SIGNALS})
TABLE_KEYS = frozenset({"rules", "scan_chars"})


@dataclass(frozen=True)
class Decision:
    model: str
    rule: str
    reason: str


@dataclass(slots=True)
class Facts:
    """What the rules look at, measured once per request."""

    text: str
    lowered: str
    chars: int
    tokens: int
    turns: int
    # Whole words of ``text`` and the same words space-joined (for phrases), when needed.
    words: frozenset[str] = frozenset()
    joined: str = ""


@dataclass(frozen=True)
class Keywords:
    """Single words are a set lookup; phrases a substring test on the joined words."""

    words: frozenset[str]
    phrases: tuple[str, ...]

    def find(self, f: Facts) -> str | None:
        hit = self.words & f.words
        if hit:
            return min(hit)
        for phrase in self.phrases:
            if phrase in f.joined:
                return phrase.strip()
        return None


@dataclass(frozen=True)
class Rule:
    name: str
    model: str
    reason: str
    bounds: tuple[tuple[str, int], ...] = ()
    keywords: Keywords | None = None
    patterns: tuple[re.Pattern[str], ...] = ()
    code_fence: bool = False
    math: bool = False
    scripts: tuple[str, ...] = ()
    # Set once by ``_rule``: whether any signal is configured.
    has_signal: bool = False

    def match(self, f: Facts) -> str | None:
        """Why the rule matches (a short phrase), or None."""
        for name, limit in self.bounds:
            value = getattr(f, name[4:])
            if (value < limit) if name.startswith("min_") else (value > limit):
                return None
        if not self.has_signal:
            return self._bounds_detail(f)
        if self.code_fence and "```" in f.text:
            return "code fence"
        if self.keywords is not None and (word := self.keywords.find(f)):
            return f"keyword {word!r}"
        for pattern in self.patterns:
            if m := pattern.search(f.text):
                return f"pattern {m.group(0)[:40]!r}"
        if self.math and (notation := find_math(f.lowered)):
            return f"math {notation!r}"
        for script in self.scripts:
            sample = f.text[:SCRIPT_SAMPLE_CHARS]
            regex = _SCRIPT_RES[script]
            if regex.search(sample) is None:
                continue
            letters = len(sample) - sample.count(" ")
            if len(regex.findall(sample)) >= SCRIPT_SHARE * letters:
                return f"{script} script"
        return None

    def _bounds_detail(self, f: Facts) -> str:
        parts = []
        for name, limit in self.bounds:
            what = name[4:]
            op = "≥" if name.startswith("min_") else "≤"
            parts.append(f"{getattr(f, what)} {what} {op} {limit}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Router:
    default: str
    rules: tuple[Rule, ...] = ()
    scan_chars: int = DEFAULT_SCAN_CHARS
    models: frozenset[str] = field(default_factory=frozenset)
    # Splitting the text into words is skipped when no rule has keywords.
    needs_words: bool = True

    def route(self, messages: Sequence[Mapping[str, Any]]) -> Decision:
        facts = measure(messages, self.scan_chars, words=self.needs_words)
        for rule in self.rules:
            detail = rule.match(facts)
            if detail is not None:
                return Decision(rule.model, rule.name, f"{rule.reason}: {detail}")
        return Decision(self.default, "default", "no rule matched: default auto model")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def measure(messages: Sequence[Mapping[str, Any]], scan_chars: int, *,
            words: bool = True) -> Facts:
    total = 0
    turns = 0
    last = ""
    for m in messages:
        text = _content_text(m.get("content"))
        total += len(text)
        if m.get("role") != "system":
            turns += 1
        if m.get("role") == "user":
            last = text
    chars = len(last)
    if chars > scan_chars:
        half = scan_chars // 2
        last = f"{last[:half]}\n{last[-half:]}"
    lowered = last.lower()
    # About four characters a token, plus framing per message (as pricing estimates it).
    tokens = (total + 3) // 4 + 4 * len(messages)
    split = lowered.translate(_WORDS).split() if words else []
    return Facts(text=last, lowered=lowered, chars=chars, tokens=tokens, turns=turns,
                 words=frozenset(split), joined=f" {' '.join(split)} " if split else "")


def _keywords(raw: Any, where: str) -> Keywords | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(w, str) and w.strip() for w in raw):
        raise RegistryError(f"{where}: keywords must be a list of non-empty strings")
    words: set[str] = set()
    phrases: set[str] = set()
    for keyword in raw:
        parts = keyword.lower().translate(_WORDS).split()
        if not parts:
            raise RegistryError(f"{where}: keyword {keyword!r} has no word characters")
        if len(parts) == 1:
            words.add(parts[0])
        else:
            phrases.add(f" {' '.join(parts)} ")
    return Keywords(frozenset(words), tuple(sorted(phrases)))


def _patterns(raw: Any, where: str) -> tuple[re.Pattern[str], ...]:
    items = [raw] if isinstance(raw, str) else raw
    if items is None:
        return ()
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise RegistryError(f"{where}: pattern must be a regex or a list of regexes")
    try:
        return tuple(re.compile(p) for p in items)
    except re.error as exc:
        raise RegistryError(f"{where}: bad pattern: {exc}") from exc


def _rule(raw: Any, index: int, models: frozenset[str]) -> Rule:
    where = f"[[routing.rules]] #{index + 1}"
    if not isinstance(raw, dict):
        raise RegistryError(f"{where} must be a table")
    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise RegistryError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    name = str(raw.get("name") or f"rule{index + 1}")
    where = f"routing rule {name!r}"
    model = raw.get("model")
    if model not in models:
        raise RegistryError(f"{where} names unknown model {model!r}")
    bounds = []
    for key in BOUNDS:
        if key in raw:
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RegistryError(f"{where}: {key} must be a non-negative integer")
            bounds.append((key, value))
    scripts = raw.get("script", [])
    scripts = [scripts] if isinstance(scripts, str) else scripts
    if not isinstance(scripts, list) or any(s not in SCRIPTS for s in scripts):
        raise RegistryError(f"{where}: script must be among {', '.join(SCRIPTS)}")
    for flag in ("code_fence", "math"):
        if not isinstance(raw.get(flag, False), bool):
            raise RegistryError(f"{where}: {flag} must be true or false")
    keywords = _keywords(raw.get("keywords"), where)
    patterns = _patterns(raw.get("pattern"), where)
    code_fence, math = bool(raw.get("code_fence", False)), bool(raw.get("math", False))
    rule = Rule(
        name=name,
        model=str(model),
        reason=str(raw.get("reason") or name),
        bounds=tuple(bounds),
        keywords=keywords,
        patterns=patterns,
        code_fence=code_fence,
        math=math,
        scripts=tuple(scripts),
        has_signal=bool(keywords or patterns or code_fence or math or scripts),
    )
    if not rule.has_signal and not rule.bounds:
        raise RegistryError(f"{where} has no condition and would match everything")
    return rule


def build_router(registry: Registry) -> Router:
    """Compile the registry's ``[routing]`` table; raises ``RegistryError`` if it is wrong."""
    table = registry.routing
    unknown = set(table) - TABLE_KEYS
    if unknown:
        raise RegistryError(f"[routing]: unknown keys {', '.join(sorted(unknown))}")
    models = frozenset(registry.models)
    default = registry.defaults.get("auto") or next(iter(registry.models), None)
    if default not in models:
        raise RegistryError(f"defaults.auto names unknown model {default!r}")
    raw_rules = table.get("rules", [])
    if not isinstance(raw_rules, list):
        raise RegistryError("[routing] rules must be an array of tables ([[routing.rules]])")
    scan = table.get("scan_chars", DEFAULT_SCAN_CHARS)
    if not isinstance(scan, int) or scan < 64:
        raise RegistryError("[routing] scan_chars must be an integer of at least 64")
    rules = tuple(_rule(r, i, models) for i, r in enumerate(raw_rules))
    return Router(default=str(default), rules=rules, scan_chars=scan, models=models,
                  needs_words=any(r.keywords is not None for r in rules))


_routers: dict[int, tuple[Registry, Router]] = {}


def get_router(registry: Registry) -> Router:
    """The compiled router of a (process-wide, cached) registry."""
    cached = _routers.get(id(registry))
    if cached is None or cached[0] is not registry:
        cached = (registry, build_router(registry))
        _routers[id(registry)] = cached
    return cached[1]
