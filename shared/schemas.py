"""Request bodies of the public API as pydantic models: validation and the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

Role = Literal["system", "user", "assistant", "tool"]
# Ids a caller chooses: C0 and C1 controls, DEL and the Unicode line separators refused.
NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class Message(Strict):
    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(default=None, max_length=200)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _content_present(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required")
        return self


class Routing(Strict):
    fallback: list[str] = Field(default_factory=list, max_length=8)
    strategy: Literal["sequential"] = "sequential"


class Common(Strict):
    messages: list[Message] = Field(min_length=1, max_length=2000)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    # No control character: PostgreSQL cannot store a NUL in text, an id travels in paths
    # (``/budgets/sessions/<id>``) that refuse them, and no real id holds one.
    session_id: str | None = Field(default=None, min_length=1, max_length=200,
                                   pattern=NO_CONTROL)
    # Keep the job running after the client disconnects (batch-like use of a stream).
    keep_running: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def model_ids(self) -> list[str]:
        """Every registry id the request names (checked before a job is created)."""
        raise NotImplementedError


def repeated_fallback(model: str | None, fallback: list[str]) -> int | None:
    """The index of the first fallback that repeats the primary or an earlier fallback."""
    seen = {model}
    for i, model_id in enumerate(fallback):
        if model_id in seen:
            return i
        seen.add(model_id)
    return None


def _distinct(ids: list[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        raise ValueError("models must be distinct")
    return ids


class ChatRequest(Common):
    model: str = Field(min_length=1, max_length=100)
    routing: Routing | None = None

    @field_validator("routing")
    @classmethod
    def _no_repeats(cls, v: Routing | None, info: ValidationInfo) -> Routing | None:
        if v is not None:
            at = repeated_fallback(info.data.get("model"), v.fallback)
            if at is not None:
                # Named by its place in the chain (``routing.fallback.<i>``), not the
                # whole ``routing`` object, so a client can point at the entry to drop.
                raise ValidationError.from_exception_data("Routing", [InitErrorDetails(
                    type=PydanticCustomError(
                        "duplicate_model",
                        "{model} is already in the chain: the primary and each fallback "
                        "must be distinct models", {"model": repr(v.fallback[at])}),
                    loc=("fallback", at), input=v.fallback[at])])
        return v

    def model_ids(self) -> list[str]:
        ids = [] if self.model == "auto" else [self.model]
        return ids + (self.routing.fallback if self.routing else [])


class CompareRequest(Common):
    models: list[str] = Field(min_length=2, max_length=9)

    _d = field_validator("models")(classmethod(lambda cls, v: _distinct(v)))

    def model_ids(self) -> list[str]:
        return list(self.models)


BlendStrategy = Literal["consensus", "council", "best_of", "chain", "moa", "self_moa"]


class BlendRequest(Common):
    # strategy comes first so the checks of the fields after it can read it (and name the
    # offending field in the 400's ``param``).
    strategy: BlendStrategy = "consensus"
    models: list[str] = Field(min_length=1, max_length=6)
    synthesizer: str | None = Field(default=None, min_length=1, max_length=100)
    layers: int | None = Field(default=None, ge=1, le=3)
    samples: int | None = Field(default=None, ge=2, le=8)

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str], info: ValidationInfo) -> list[str]:
        _distinct(v)
        strategy = info.data.get("strategy")
        if strategy == "self_moa" and len(v) != 1:
            raise ValueError("self_moa takes exactly one model")
        if strategy is not None and strategy != "self_moa" and len(v) < 2:
            raise ValueError(f"strategy {strategy} takes 2 to 6 models")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("strategy") != "moa":
            raise ValueError("layers is only allowed with strategy moa")
        return v

    @field_validator("samples")
    @classmethod
    def _samples(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("strategy") != "self_moa":
            raise ValueError("samples is only allowed with strategy self_moa")
        return v

    def model_ids(self) -> list[str]:
        return list(self.models) + ([self.synthesizer] if self.synthesizer else [])


class JudgeRequest(Common):
    contestants: list[str] = Field(min_length=2, max_length=4)
    judge: str = Field(min_length=1, max_length=100)
    criteria: str | None = Field(default=None, max_length=4000)

    _d = field_validator("contestants")(classmethod(lambda cls, v: _distinct(v)))

    def model_ids(self) -> list[str]:
        return [*self.contestants, self.judge]


JOB_KINDS: dict[str, type[Common]] = {
    "chat": ChatRequest,
    "compare": CompareRequest,
    "blend": BlendRequest,
    "judge": JudgeRequest,
}


# --- Batches (POST /api/v1/batches): one job a line, JSONL.

MAX_BATCH_LINES = 1000


class BatchLine(Strict):
    """One line of a batch: a job's endpoint and its body, as that endpoint takes it."""

    custom_id: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")
    endpoint: Literal["chat", "compare", "blend", "judge"]
    body: dict[str, Any]

    @field_validator("endpoint", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        # "/api/v1/chat" names the same endpoint as "chat".
        return v.removeprefix("/api/v1/") if isinstance(v, str) else v


# --- The OpenAI-compatible body (POST /v1/chat/completions), translated to a ChatRequest.

OpenAIRole = Literal["system", "developer", "user", "assistant", "tool"]


class OpenAIMessage(Strict):
    role: OpenAIRole
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(default=None, max_length=200)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = Field(default=None, max_length=200)
    # Present when a client sends a previous reply back as it came; no model needs them.
    refusal: str | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None


class StreamOptions(Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ChorusOptions(Strict):
    """The ``chorus`` extension of the OpenAI body (the SDK's ``extra_body``)."""

    fallback: list[str] = Field(default_factory=list, max_length=8)
    keep_running: bool = False
    # No control character, as in ``Common.session_id``.
    session_id: str | None = Field(default=None, min_length=1, max_length=200,
                                   pattern=NO_CONTROL)


class ChatCompletionRequest(Strict):
    model: str = Field(min_length=1, max_length=100)
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=2000)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    # Accepted so unmodified SDK code works; Chorus answers with one choice, no logprobs.
    n: Literal[1] | None = None
    logprobs: Literal[False] | None = None
    user: str | None = Field(default=None, max_length=256)
    seed: int | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    chorus: ChorusOptions | None = None

    _stop = field_validator("stop")(classmethod(lambda cls, v: Common._stop_list(v)))

    def chat_body(self) -> dict[str, Any]:
        """The equivalent Chorus chat body (validated again as a ``ChatRequest``)."""
        keep = ("content", "name", "tool_calls", "tool_call_id")
        messages = [
            {"role": "system" if m.role == "developer" else m.role,
             **{k: getattr(m, k) for k in keep if getattr(m, k) is not None}}
            for m in self.messages
        ]
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "stream": self.stream}
        max_tokens = self.max_completion_tokens or self.max_tokens
        for name, value in (("temperature", self.temperature), ("top_p", self.top_p),
                            ("max_tokens", max_tokens), ("stop", self.stop),
                            ("tools", self.tools), ("tool_choice", self.tool_choice),
                            ("response_format", self.response_format)):
            if value is not None:
                body[name] = value
        if self.chorus is not None:
            if self.chorus.fallback:
                body["routing"] = {"fallback": list(self.chorus.fallback)}
            if self.chorus.session_id is not None:
                body["session_id"] = self.chorus.session_id
            body["keep_running"] = self.chorus.keep_running
        return body
