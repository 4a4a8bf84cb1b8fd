"""What the mock will answer: deterministic text, a tool call or JSON, decided before sending.

Every wire format parses its request into a ``MockRequest`` and renders the same ``Plan``,
so the three formats answer the same prompt alike and faults hit them alike.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from workers.providers.mock.behaviour import Profile

_WORD_TEXT = (
    "the answer depends on context and careful reasoning about each part of the "
    "question river mountain signal quiet bright vector cloud garden harbor lantern "
    "meadow orbit pattern prism quartz ripple summit timber velvet willow zephyr "
    "amber beacon cobalt delta ember falcon glacier horizon island jasmine kernel "
    "lattice marble nebula ocean pebble quiver rocket saddle tundra umbra valley "
    "wander yonder zenith model token stream latency gateway provider balance "
    "insight measure method notion option result sample theory update value window "
    "system memory network record process"
)
WORDS = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class ToolSpec:
    name: str
    schema: dict[str, Any]


@dataclass
class MockRequest:
    """One chat request, whatever wire format it arrived in."""

    model: str
    stream: bool
    prompt_text: str
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    tools: list[ToolSpec] = field(default_factory=list)
    # "auto", "none" or "required"; a forced tool name goes in forced_tool.
    tool_choice: str = "auto"
    forced_tool: str | None = None
    tool_result: str | None = None
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None
    # OpenAI only: send the usage chunk before [DONE].
    include_usage: bool = False


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str
    fragments: list[str]

    @property
    def args(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.arguments)
        return parsed


@dataclass
class Plan:
    model: str
    prompt_tokens: int
    tokens: list[str]
    tool_call: ToolCall | None
    # Neutral reasons, mapped per format: stop, length, stop_sequence, tool.
    finish: str
    stop_sequence: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        if self.tool_call is not None:
            return max(1, len(self.tool_call.arguments) // 4 + 8)
        return len(self.tokens)


def split_tokens(text: str) -> list[str]:
    """Word tokens with their leading whitespace, so the tokens join back to ``text``."""
    tokens = re.findall(r"\s*\S+", text)
    tail = text[len("".join(tokens)) :]
    if tail:
        if tokens:
            tokens[-1] += tail
        else:
            tokens = [tail]
    return tokens


def _rng(model: str, prompt: str) -> random.Random:
    digest = hashlib.sha256(f"{model}\x00{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def generate_words(rng: random.Random, count: int) -> list[str]:
    """``count`` word tokens forming sentences: capitalised starts, full stops."""
    out: list[str] = []
    sentence_left = 0
    for i in range(count):
        word = rng.choice(WORDS)
        if sentence_left == 0:
            word = word.capitalize()
            sentence_left = rng.randint(6, 12)
            if count - i - sentence_left < 3:
                sentence_left = count - i  # no one- or two-word sentence at the end
        sentence_left -= 1
        if sentence_left == 0 or i == count - 1:
            word += "."
        out.append(word if i == 0 else " " + word)
    return out


def sample_value(schema: Any, rng: random.Random, name: str = "") -> Any:
    """A small value fitting a JSON-schema fragment (Gemini's upper-case types included)."""
    if not isinstance(schema, dict):
        return "value"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "string")
    kind = str(kind).lower()
    if kind == "object":
        return object_from_schema(schema, rng)
    if kind == "array":
        return [sample_value(schema.get("items", {}), rng)]
    if kind == "integer":
        return rng.randint(1, 9)
    if kind == "number":
        return round(rng.uniform(1, 99), 1)
    if kind == "boolean":
        return True
    return rng.choice(WORDS) if name != "location" else "Paris"


def object_from_schema(schema: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    props = schema.get("properties") or {}
    required = schema.get("required") or list(props)[:1]
    return {name: sample_value(props.get(name, {}), rng, name) for name in required}


def _choose_tool(req: MockRequest) -> ToolSpec | None:
    if not req.tools or req.tool_choice == "none":
        return None
    if req.forced_tool:
        return next((t for t in req.tools if t.name == req.forced_tool), req.tools[0])
    # After a tool result a model normally answers in words, unless forced to call again.
    if req.tool_result is not None and req.tool_choice != "required":
        return None
    return req.tools[0]


def _fragments(text: str, parts: int = 4) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)] or [text]


def _tool_call(tool: ToolSpec, rng: random.Random) -> ToolCall:
    args = json.dumps(object_from_schema(tool.schema, rng))
    call_id = f"{rng.getrandbits(48):012x}"
    return ToolCall(id=call_id, name=tool.name, arguments=args, fragments=_fragments(args))


_LABEL = re.compile(r'<answer label="([A-Z])">')


def _verdict(prompt: str, rng: random.Random) -> str | None:
    """Asked to score labelled answers (a judge prompt), answer like a judge would, so
    the one-machine start's judge endpoint works without scripted replies."""
    if '"scores"' not in prompt:
        return None
    labels = list(dict.fromkeys(_LABEL.findall(prompt)))
    if not labels:
        return None
    scores = [{"label": label, "score": rng.randint(4, 10),
               "reason": f"Answer {label} is {rng.choice(_REASONS)}."} for label in labels]
    return json.dumps({"scores": scores})


_REASONS = ("clear and correct", "mostly right but thin", "thorough", "accurate but verbose",
            "helpful with small gaps")


def _content_tokens(req: MockRequest, profile: Profile, reply: str | None) -> list[str]:
    rng = _rng(req.model, req.prompt_text)
    if reply is not None:
        return split_tokens(reply)
    verdict = _verdict(req.prompt_text, rng)
    if verdict is not None:
        return split_tokens(verdict)
    if req.json_mode:
        obj: dict[str, Any]
        if req.json_schema and req.json_schema.get("properties"):
            obj = object_from_schema(req.json_schema, rng)
        else:
            obj = {"answer": "".join(generate_words(rng, max(1, profile.tokens - 4)))}
        return split_tokens(json.dumps(obj))
    words: list[str] = []
    if req.tool_result is not None:
        snippet = " ".join(req.tool_result.split())[:60]
        words = split_tokens(f"The tool returned {snippet}.")
    rest = max(0, profile.tokens - len(words))
    generated = generate_words(rng, rest)
    if words and generated:
        generated[0] = " " + generated[0].lstrip()
    return words + generated


def _cut(tokens: list[str], req: MockRequest) -> tuple[list[str], str, str | None]:
    """Apply ``stop`` sequences and ``max_tokens`` the way the real APIs do."""
    out: list[str] = []
    text = ""
    for token in tokens:
        if req.max_tokens is not None and len(out) >= req.max_tokens:
            return out, "length", None
        candidate = text + token
        hits = [(candidate.find(s), s) for s in req.stop if s and s in candidate]
        if hits:
            index, seq = min(hits)
            piece = candidate[:index][len(text) :]
            if piece:
                out.append(piece)
            return out, "stop_sequence", seq
        out.append(token)
        text = candidate
    return out, "stop", None


def build_plan(req: MockRequest, profile: Profile, reply: str | None) -> Plan:
    prompt_tokens = max(1, len(req.prompt_text) // 4)
    tool = _choose_tool(req) if reply is None else None
    if tool is not None:
        call = _tool_call(tool, _rng(req.model, req.prompt_text))
        return Plan(req.model, prompt_tokens, [], call, "tool")
    tokens, finish, seq = _cut(_content_tokens(req, profile, reply), req)
    return Plan(req.model, prompt_tokens, tokens, None, finish, seq)


def flatten_text(content: Any) -> str:
    """Text of a message content in any of the three formats (string, parts or blocks)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        if "text" in content:
            return str(content["text"])
        return flatten_text(content.get("content") or content.get("parts"))
    if isinstance(content, list):
        return "\n".join(t for t in (flatten_text(c) for c in content) if t)
    return str(content)
