"""Request bodies of the public API as pydantic models: validation and the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant", "tool"]


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
    session_id: str | None = Field(default=None, min_length=1, max_length=200)
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


def _distinct(ids: list[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        raise ValueError("models must be distinct")
    return ids


class ChatRequest(Common):
    model: str = Field(min_length=1, max_length=100)
    routing: Routing | None = None

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
    models: list[str] = Field(min_length=1, max_length=6)
    strategy: BlendStrategy = "consensus"
    synthesizer: str | None = Field(default=None, min_length=1, max_length=100)
    layers: int | None = Field(default=None, ge=1, le=3)
    samples: int | None = Field(default=None, ge=2, le=8)

    _d = field_validator("models")(classmethod(lambda cls, v: _distinct(v)))

    @model_validator(mode="after")
    def _strategy_fields(self) -> BlendRequest:
        if self.strategy == "self_moa":
            if len(self.models) != 1:
                raise ValueError("self_moa takes exactly one model")
        elif len(self.models) < 2:
            raise ValueError("blend takes 2 to 6 models")
        if self.layers is not None and self.strategy != "moa":
            raise ValueError("layers is only allowed with strategy moa")
        if self.samples is not None and self.strategy != "self_moa":
            raise ValueError("samples is only allowed with strategy self_moa")
        return self

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
