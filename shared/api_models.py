"""Response bodies of the public API as pydantic models, for the OpenAPI document and tests.

Responses stay open (extra fields allowed) so a new field is never a breaking change.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# --- Chorus endpoints


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class InsufficientCredits(ErrorBody):
    credits: float = Field(description="credits available")
    required: float = Field(description="credits this request may need (its reservation)")


class ToolCallFunction(BaseModel):
    name: str
    arguments: str = Field(description="the arguments as a JSON string")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class JobFinal(BaseModel):
    """The job's final data: the last event of its stream, or a non-streaming answer."""

    job_id: str
    status: Literal["succeeded", "failed", "cancelled"]
    credits_charged: float
    resolved_model: str | None = None
    model: str | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_second: float | None = None
    cost: float | None = None
    finish_reason: str | None = None
    full_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class JobFailed(JobFinal):
    """Every upstream failed (502): the job's final data with the error."""

    error: ErrorDetail


class JobView(BaseModel):
    id: str
    kind: Literal["chat", "compare", "blend", "judge"] | str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    resolved_model: str | None
    credits_reserved: float
    credits_charged: float | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class BatchCounts(BaseModel):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    not_submitted: int = Field(description="lines whose hold was refused (402) or that "
                                           "could not be stored; their result line says why")


class BatchView(BaseModel):
    id: str
    status: Literal["in_progress", "completed", "cancelling", "cancelled"]
    counts: BatchCounts
    credits_charged: float = Field(description="what the batch's finished jobs were charged")
    created_at: str
    finished_at: str | None = Field(description="when its last job ended")
    cancelled_at: str | None


class BatchResultLine(BaseModel):
    """One line of ``GET /api/v1/batches/{id}/results`` (JSONL), in the batch's order."""

    custom_id: str
    endpoint: str
    job_id: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled", "not_submitted"]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    credits_charged: float | None


class CancelAccepted(BaseModel):
    id: str
    status: str = Field(description="the job's status when the cancel was requested")
    cancel_requested: bool


class Pricing(BaseModel):
    input_per_mtok: float
    output_per_mtok: float
    unit: str


class ModelView(BaseModel):
    id: str
    provider: str
    upstream: str
    pricing: Pricing
    context_window: int
    max_output_tokens: int
    capabilities: list[str]
    tags: list[str]
    health: Any = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelView]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


# --- OpenAI-compatible endpoints (the shapes the official SDKs parse)


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class CompletionChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChorusInfo(BaseModel):
    """Chorus' own data on an OpenAI-shaped answer (clients may ignore it)."""

    job_id: str
    status: Literal["succeeded", "failed", "cancelled"]
    credits_charged: float
    resolved_model: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    chorus: ChorusInfo | None = None


class ToolCallDeltaFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallDeltaFunction | None = None


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One ``data:`` line of a streamed completion; the stream ends with ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    chorus: ChorusInfo | None = None


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"]
    data: list[OpenAIModel]


# --- Account endpoints (credits, usage, budgets, BYOK)


class LedgerEntryView(BaseModel):
    id: int
    kind: str = Field(description="grant, reserve, settle, …")
    amount: float = Field(description="change to the balance")
    hold: float = Field(description="change to the reserved credits")
    job_id: str | None
    note: str | None
    created_at: str


class CreditsView(BaseModel):
    balance: float
    reserved: float
    available: float
    ledger: list[LedgerEntryView]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class UsageRow(BaseModel):
    id: int
    job_id: str
    model: str
    provider: str
    role: str | None
    status: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None
    latency_ms: float
    cost: float
    error: str | None
    created_at: str


class UsageByModel(BaseModel):
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    p50_latency_ms: float
    error_rate: float


class UsageView(BaseModel):
    data: list[UsageRow]
    next_cursor: str | None
    models: list[UsageByModel]


class BudgetUsage(BaseModel):
    limit: float | None = Field(description="null: no budget")
    spent: float
    reserved: float
    remaining: float | None


class BudgetsView(BaseModel):
    key: BudgetUsage
    session_default: float | None


class SessionDefault(BaseModel):
    session_default: float | None


class SessionBudget(BudgetUsage):
    session_id: str


class ByokKey(BaseModel):
    """A stored provider key; the key itself is never returned."""

    provider: str
    created_at: str
    updated_at: str


class ByokList(BaseModel):
    data: list[ByokKey]


class ByokDeleted(BaseModel):
    provider: str
    deleted: bool
