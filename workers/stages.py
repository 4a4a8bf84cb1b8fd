"""What a pipeline is made of: its steps and stages, its state, and each kind's parts.

Compare, blend and judge describe their pipelines with these; ``workers.pipeline`` runs
them as Celery canvases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.registry import ModelSpec
from workers.calls import CallResult, JobContext
from workers.chat import chat_call
from workers.jobs import JobSpec, Outcome
from workers.providers.base import ChatCall

STATE_TTL_S = 3600
DEFAULT_QUEUE = "interactive"
Record = dict[str, Any]


def state_key(job_id: str) -> str:
    return f"chorus:job:{job_id}:pipe"


def canvas_key(job_id: str) -> str:
    """Ids of the job's chord header tasks, revoked on cancel."""
    return f"chorus:job:{job_id}:canvas"


@dataclass
class Step:
    """One model call of a stage, as its task receives it (plain JSON)."""

    key: str  # unique in the job: where the call's record is stored
    model: str
    role: str
    prompt: str  # the registered builder that makes its request
    layer: int | None = None
    inputs: list[str] = field(default_factory=list)  # earlier calls whose answers it quotes
    # A chain step's running answer: the last of these calls that answered.
    running: list[str] = field(default_factory=list)
    temperature: float | None = None
    tags: dict[str, Any] = field(default_factory=dict)  # extra event fields (sample, step…)
    params: dict[str, Any] = field(default_factory=dict)  # for the builder only

    @property
    def quoted(self) -> list[str]:
        """Every earlier call whose record this step reads."""
        return [*self.inputs, *self.running]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Step:
        return cls(**raw)


@dataclass
class Stage:
    name: str  # handed back to the kind's ``advance`` when the stage is done
    steps: list[Step]
    sequential: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)  # published before it starts


@dataclass
class PipeState:
    spec: JobSpec
    queue: str
    records: dict[str, Record]
    ctx: JobContext
    cancelled: bool = False

    @property
    def body(self) -> dict[str, Any]:
        return self.spec.body

    def publish(self, event: dict[str, Any]) -> None:
        self.ctx.publish(event)

    def answered(self, keys: Iterable[str]) -> list[Record]:
        return [r for k in keys if (r := self.records.get(k)) is not None and is_ok(r)]

    def calls(self) -> list[CallResult]:
        return [CallResult.from_record(r) for r in self.records.values()]


Builder = Callable[[dict[str, Any], Step, dict[str, Record], ModelSpec], ChatCall]
Advance = Callable[[PipeState, str], "Stage | Outcome"]
Partial = Callable[[PipeState], dict[str, Any]]

BUILDERS: dict[str, Builder] = {}
KINDS: dict[str, tuple[Advance, Partial]] = {}


def builder(name: str) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn

    return register


def register_kind(kind: str, advance_fn: Advance, partial: Partial) -> None:
    """``advance_fn`` decides what follows a stage; ``partial`` is a cancelled job's result."""
    KINDS[kind] = (advance_fn, partial)


def is_ok(rec: Record) -> bool:
    return not rec.get("error") and not rec.get("cancelled")


def request_call(body: dict[str, Any], *, tools: bool = True) -> ChatCall:
    """The client's request as one call; pipelines whose output is text drop its tools."""
    call = chat_call(body)
    return call if tools else dataclasses.replace(call, tools=None, tool_choice=None)


def call_summary(rec: Record) -> dict[str, Any]:
    """A call's final fields for a job result, tagged with where it ran in the pipeline."""
    res = CallResult.from_record(rec)
    out = res.summary()
    for tag in ("role", "layer", "sample", "step", "attempt"):
        if rec.get(tag) is not None:
            out[tag] = rec[tag]
    if res.error is not None:
        out["error"] = res.error.describe()
    if res.cancelled:
        out["cancelled"] = True
    return out


NOT_RUN = {"code": "not_run", "message": "the call did not run"}


def missing_summary(step_model: str, **tags: Any) -> dict[str, Any]:
    """The summary of a call that never ran (its task was revoked or the job cancelled)."""
    return {"model": step_model, **tags, "error": NOT_RUN}


def spec_from_doc(job_id: str, doc: dict[str, Any]) -> JobSpec:
    return JobSpec(job_id, doc["kind"], doc["account_id"], doc["body"], doc["zero_retention"],
                   doc.get("byok") or [])
