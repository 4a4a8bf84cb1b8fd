"""The OpenAPI 3.1 document at ``GET /openapi.json``, generated from the pydantic models
that validate requests (``shared.schemas``) and describe responses (``shared.api_models``).

Each endpoint is one ``Op`` row below; ``tests/unit/api/test_openapi.py`` fails when a
route of the app has no row, so a new endpoint cannot ship undocumented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.account import ByokBody, LimitBody, Page, UsageQuery
from shared import api_models as am
from shared.registry import Registry, get_registry
from shared.schemas import (
    MAX_BATCH_LINES,
    BatchLine,
    BlendRequest,
    ChatCompletionRequest,
    ChatRequest,
    CompareRequest,
    JudgeRequest,
)

bp = Blueprint("openapi", __name__)

SSE_EXAMPLE = (
    'id: 1\ndata: {"event":"chunk","model":"gpt-5-mini","delta":"Hello","done":false,'
    '"latency_ms":81.2,"content_length":5}\n\n'
    'id: 2\ndata: {"final":true,"event":"done","job_id":"…","status":"succeeded",'
    '"credits_charged":1.00004}\n\ndata: [DONE]\n\n'
)
CHUNK_SSE_EXAMPLE = (
    'data: {"id":"chatcmpl-…","object":"chat.completion.chunk","created":1767225600,'
    '"model":"gpt-5-mini","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},'
    '"finish_reason":null}]}\n\ndata: [DONE]\n\n'
)
ERROR_TEXT = {
    400: "invalid body (`invalid_json`: not JSON), unknown field or model, or a control "
         "character in a path parameter or the query",
    401: "missing or invalid API key",
    402: "not enough credits (or budget room) for the request's hold",
    404: "not there, or not yours",
    413: "body too large",
    429: "rate limited; retry after `Retry-After` seconds",
    502: "every upstream model failed",
    503: "a dependency (Redis, the database, the queue) is unavailable",
}
RATE_HEADERS = {
    "Retry-After": {"description": "seconds until a retry can succeed",
                    "schema": {"type": "integer"}},
}
REQUEST_MODELS: list[type[BaseModel]] = [
    ChatRequest, CompareRequest, BlendRequest, JudgeRequest, ChatCompletionRequest,
    LimitBody, ByokBody, BatchLine,
]
RESPONSE_MODELS: list[type[BaseModel]] = [
    am.ErrorBody, am.InsufficientCredits, am.JobFinal, am.JobFailed, am.JobView,
    am.CancelAccepted, am.ModelList, am.Health, am.Readiness, am.OpenAIError,
    am.ChatCompletion, am.ChatCompletionChunk, am.OpenAIModel, am.OpenAIModelList,
    am.CreditsView, am.UsageView, am.BudgetsView, am.SessionDefault, am.SessionBudget,
    am.ByokKey, am.ByokList, am.ByokDeleted, am.BatchView, am.BatchResultLine,
]


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    tag: str
    ok: type[BaseModel] | None = None
    request: type[BaseModel] | None = None
    errors: tuple[int, ...] = (401, 429, 503)
    # 200 may be an SSE stream instead of (or as well as) JSON.
    stream: str | None = None
    json_ok: bool = True
    openai: bool = False
    public: bool = False
    description: str = ""
    params: tuple[dict[str, Any], ...] = ()
    extra_responses: dict[str, Any] = field(default_factory=dict)
    # A request body that is not one JSON model (JSONL, say): its content map as is.
    request_content: dict[str, Any] | None = None


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def query_params(model: type[BaseModel]) -> tuple[dict[str, Any], ...]:
    """A pydantic model of a query string as OpenAPI query parameters."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": {k: v for k, v in prop.items() if k != "title"}}
        if "description" in prop:
            param["description"] = prop["description"]
        out.append(param)
    return tuple(out)


SESSION_ID = {"name": "session_id", "in": "path", "required": True,
              "schema": {"type": "string"}, "description": "a chatbot's session id"}
PROVIDER = {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "a provider name of the registry (see GET /api/v1/models)"}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "the job id (a UUID) from a submit response or stream"}
BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "the batch id from POST /api/v1/batches"}
SUBMIT_ERRORS = (400, 401, 402, 413, 429, 502, 503)
SUBMIT_TEXT = (
    "With `stream: true` the answer is an SSE stream (`text/event-stream`; the job id is "
    "in the `X-Chorus-Job-Id` header); otherwise the job's final data as JSON. Closing a "
    "stream early cancels the job's provider calls unless the body sets "
    "`keep_running: true`."
)
OPS: list[Op] = [
    Op("post", "/api/v1/chat", "One model (or `auto`), optional mesh failover", "jobs",
       am.JobFinal, ChatRequest, SUBMIT_ERRORS, "sse", description=SUBMIT_TEXT),
    Op("post", "/api/v1/compare", "The same messages to 2-9 models side by side", "jobs",
       am.JobFinal, CompareRequest, SUBMIT_ERRORS, "sse", description=SUBMIT_TEXT),
    Op("post", "/api/v1/blend", "2-6 models answer, a synthesiser merges", "jobs",
       am.JobFinal, BlendRequest, SUBMIT_ERRORS, "sse", description=SUBMIT_TEXT),
    Op("post", "/api/v1/judge", "2-4 contestants answer, a judge scores and ranks", "jobs",
       am.JobFinal, JudgeRequest, SUBMIT_ERRORS, "sse", description=SUBMIT_TEXT),
    Op("get", "/api/v1/jobs/{job_id}", "A job's status and result", "jobs", am.JobView,
       errors=(400, 401, 404, 429, 503), params=(JOB_ID,)),
    Op("delete", "/api/v1/jobs/{job_id}", "Cancel a job; it is settled for what it used",
       "jobs", am.CancelAccepted, errors=(400, 401, 404, 429, 503), params=(JOB_ID,)),
    Op("get", "/api/v1/jobs/{job_id}/events", "A job's events as SSE, resumable", "jobs",
       errors=(400, 401, 404, 429, 503), stream="sse", json_ok=False,
       description="Every event after `Last-Event-ID` (header or `last_event_id` query, "
                   "a whole number from 0 to 2^63-1), exactly once and in order, ending "
                   "with `data: [DONE]` (at once for an ended job read at or past its last "
                   "event; with its final event from the database once its events "
                   "expired). When the event bus fails, or the server is stopping "
                   "(`reason: \"server draining\"`), the stream ends with `retry:` and "
                   "a non-final `reconnect` event instead, and no `[DONE]`: resume with "
                   "its `last_event_id`.",
       params=(JOB_ID,
               {"name": "Last-Event-ID", "in": "header", "required": False,
                "schema": {"type": "string"}, "description": "resume after this event id"},
               {"name": "last_event_id", "in": "query", "required": False,
                "schema": {"type": "string"},
                "description": "the same, for clients that cannot set headers"})),
    Op("post", "/api/v1/batches", "Many jobs at once: JSONL in, one job a line", "batches",
       am.BatchView, errors=(400, 401, 413, 429, 503),
       extra_responses={"201": {"description": "the batch, its jobs queued", "content": {
           "application/json": {"schema": _ref(am.BatchView)}}}},
       json_ok=False,
       description=f"Up to {MAX_BATCH_LINES} lines, each a `BatchLine` "
                   "(`custom_id`, `endpoint`: chat|compare|blend|judge, `body` as that "
                   "endpoint takes it, without `stream`). Every line is checked first: a "
                   "bad one is a 400 whose `param` names it (`lines.<i>…`, from 0) and "
                   "nothing is created. Each line becomes a job with its own credit hold, "
                   "run on the batch queue; a line whose hold is refused has no job and "
                   "its result line says why.",
       request_content={
           "application/jsonl": {"schema": {"type": "string"},
                                 "example": '{"custom_id":"q1","endpoint":"chat","body":{'
                                            '"model":"gpt-5-mini","messages":[{"role":'
                                            '"user","content":"Hi"}]}}\n'},
           "application/json": {"schema": {
               "type": "object", "required": ["lines"], "additionalProperties": False,
               "properties": {"lines": {"type": "array", "items": _ref(BatchLine)}}}}}),
    Op("get", "/api/v1/batches/{batch_id}", "A batch's progress: counts by status", "batches",
       am.BatchView, errors=(400, 401, 404, 429, 503), params=(BATCH_ID,)),
    Op("get", "/api/v1/batches/{batch_id}/results", "A batch's results as JSONL", "batches",
       errors=(400, 401, 404, 429, 503), json_ok=False, params=(BATCH_ID,),
       description="One `BatchResultLine` (see components) per line of the batch, in its "
                   "order; a job not ended yet has its status and no result.",
       extra_responses={"200": {"description": "JSONL", "content": {"application/jsonl": {
           "schema": {"type": "string"}}}}}),
    Op("delete", "/api/v1/batches/{batch_id}", "Cancel a batch's jobs not ended yet",
       "batches", am.BatchView, errors=(400, 401, 404, 429, 503), params=(BATCH_ID,)),
    Op("get", "/api/v1/models", "The model registry: prices, context, capabilities",
       "models", am.ModelList, errors=(401, 429, 503)),
    Op("get", "/api/v1/ws", "WebSocket: the job requests and events over one socket", "jobs",
       json_ok=False, errors=(400,),
       description=(
           "Upgrade to a WebSocket (a plain GET is 400). Authenticate with the "
           "`Authorization` header or a first message `{\"type\":\"auth\",\"key\":…}`; the "
           "server answers `{\"type\":\"ready\"}`. Send `{\"type\":\"chat|compare|blend|judge\","
           "\"id\":<your id>, …body}`, `{\"type\":\"cancel\",\"id\":…}`, "
           "`{\"type\":\"follow\",\"id\":…,\"job_id\":…,\"after\":n}` or `{\"type\":\"ping\"}`. "
           "The server sends `accepted {id, job_id}`, `event {id, job_id, seq, data}` per job "
           "event, `done {id, job_id}` after a job's last event, `reconnect {id, job_id, "
           "after, retry_ms}` when the event bus failed (not the job: `follow` resumes) or "
           "the server is stopping (`reason: \"server draining\"`, then a close with 1012: "
           "connect again and `follow`), `cancelling`, `pong` and `error {id, status, "
           "error}`."),
       extra_responses={"101": {"description": "switching to the WebSocket protocol"}}),
    Op("post", "/v1/chat/completions", "OpenAI-compatible chat completion", "openai",
       am.ChatCompletion, ChatCompletionRequest, (400, 401, 402, 413, 429, 502, 503), "chunks",
       openai=True,
       description="The OpenAI chat-completions API (point an OpenAI SDK's `base_url` at "
                   "`/v1`). `model` is a registry id or `auto`; the extra body field "
                   "`chorus` takes `fallback` (mesh failover chain), `keep_running` and "
                   "`session_id`. Streams are `chat.completion.chunk` lines ending with "
                   "`data: [DONE]`."),
    Op("get", "/v1/models", "OpenAI-compatible model list", "openai", am.OpenAIModelList,
       errors=(401, 429, 503), openai=True),
    Op("get", "/v1/models/{model_id}", "OpenAI-compatible model lookup", "openai",
       am.OpenAIModel, errors=(400, 401, 404, 429, 503), openai=True,
       params=({"name": "model_id", "in": "path", "required": True,
                "schema": {"type": "string"}},)),
    Op("get", "/api/v1/credits", "Balance, reserved credits and the recent ledger", "account",
       am.CreditsView, errors=(400, 401, 429, 503), params=query_params(Page)),
    Op("get", "/api/v1/usage", "The request log and per-model aggregates", "account",
       am.UsageView, errors=(400, 401, 429, 503), params=query_params(UsageQuery)),
    Op("get", "/api/v1/budgets", "The key's budget and the default per-session budget",
       "account", am.BudgetsView),
    Op("put", "/api/v1/budgets/session-default", "Set the default budget of every session",
       "account", am.SessionDefault, LimitBody, (400, 401, 413, 429, 503)),
    Op("get", "/api/v1/budgets/sessions/{session_id}", "One session's budget and spend",
       "account", am.SessionBudget, errors=(400, 401, 429, 503), params=(SESSION_ID,)),
    Op("put", "/api/v1/budgets/sessions/{session_id}", "Set one session's budget", "account",
       am.SessionBudget, LimitBody, (400, 401, 413, 429, 503), params=(SESSION_ID,)),
    Op("get", "/api/v1/byok", "The providers with a stored key of the account's own",
       "account", am.ByokList),
    Op("put", "/api/v1/byok/{provider}", "Store (or replace) the account's key for a provider",
       "account", am.ByokKey, ByokBody, (400, 401, 413, 429, 503), params=(PROVIDER,),
       description="Calls on this provider then use the account's key and cost no token "
                   "credits. The key is sealed at rest and never returned."),
    Op("delete", "/api/v1/byok/{provider}", "Forget the account's key for a provider",
       "account", am.ByokDeleted, errors=(400, 401, 404, 429, 503), params=(PROVIDER,)),
    Op("get", "/healthz", "Liveness", "operations", am.Health, errors=(), public=True),
    Op("get", "/readyz", "Readiness: Redis and the database answer", "operations",
       am.Readiness, errors=(), public=True,
       extra_responses={"503": {"description": "a dependency is down", "content": {
           "application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}}),
    Op("get", "/metrics", "Prometheus metrics", "operations", errors=(), json_ok=False,
       public=True, extra_responses={"200": {"description": "Prometheus text format",
                                             "content": {"text/plain": {
                                                 "schema": {"type": "string"}}}}}),
    Op("get", "/openapi.json", "This document", "operations", errors=(), json_ok=False,
       public=True, extra_responses={"200": {"description": "the OpenAPI 3.1 document",
                                             "content": {"application/json": {
                                                 "schema": {"type": "object"}}}}}),
]


def request_examples(registry: Registry) -> dict[str, dict[str, Any]]:
    """Bodies that work against this deployment's registry."""
    ids = list(registry.models) or ["model-a", "model-b", "model-c"]
    a, b = ids[0], ids[1 % len(ids)]
    # A judge that can answer in JSON mode returns the most reliable verdicts.
    judges = [m.id for m in registry.models.values() if m.supports("json_mode")]
    judge = next((j for j in judges if j not in (a, b)), ids[-1])
    msgs = [{"role": "user", "content": "Explain idempotency keys in two sentences."}]
    return {
        "ChatRequest": {"model": "auto", "messages": msgs, "max_tokens": 64},
        "CompareRequest": {"models": [a, b], "messages": msgs, "max_tokens": 64},
        "BlendRequest": {"models": [a, b], "strategy": "consensus", "messages": msgs,
                         "max_tokens": 64},
        "JudgeRequest": {"contestants": [a, b], "judge": judge, "messages": msgs,
                         "max_tokens": 64},
        "ChatCompletionRequest": {"model": a, "messages": msgs, "max_tokens": 64,
                                  "chorus": {"fallback": [b]}},
        "LimitBody": {"limit": 25.0},
        "ByokBody": {"api_key": "sk-your-own-provider-key"},
        "BatchLine": {"custom_id": "q1", "endpoint": "compare",
                      "body": {"models": [a, b], "messages": msgs, "max_tokens": 64}},
    }


def _error_responses(op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in op.errors:
        model: type[BaseModel] = am.ErrorBody
        if op.openai:
            model = am.OpenAIError
        elif status == 402:
            model = am.InsufficientCredits
        elif status == 502:
            model = am.JobFailed
        resp: dict[str, Any] = {"description": ERROR_TEXT.get(status, "error"),
                                "content": {"application/json": {"schema": _ref(model)}}}
        if status == 429:
            resp["headers"] = RATE_HEADERS
        out[str(status)] = resp
    return out


def _operation(op: Op, examples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if op.ok is not None and op.json_ok:
        content["application/json"] = {"schema": _ref(op.ok)}
    if op.stream is not None:
        content["text/event-stream"] = {
            "schema": {"type": "string"},
            "example": CHUNK_SSE_EXAMPLE if op.stream == "chunks" else SSE_EXAMPLE,
        }
    responses: dict[str, Any] = {}
    if content:
        responses["200"] = {"description": "OK", "content": content}
    responses.update(op.extra_responses)
    responses.update(_error_responses(op))
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_')}"
        .replace("{", "").replace("}", "").replace(".", "_"),
        "tags": [op.tag],
        "responses": responses,
    }
    if op.description:
        out["description"] = op.description
    if op.params:
        out["parameters"] = list(op.params)
    if op.public:
        out["security"] = []
    if op.request_content is not None:
        out["requestBody"] = {"required": True, "content": op.request_content}
    if op.request is not None:
        body: dict[str, Any] = {"schema": _ref(op.request)}
        example = examples.get(op.request.__name__)
        if example is not None:
            body["example"] = example
        out["requestBody"] = {"required": True, "content": {"application/json": body}}
    return out


def component_schemas() -> dict[str, Any]:
    pairs = [(m, "validation") for m in REQUEST_MODELS]
    pairs += [(m, "serialization") for m in RESPONSE_MODELS]
    _refs, schema = models_json_schema(pairs,  # type: ignore[arg-type]
                                       ref_template="#/components/schemas/{model}")
    defs: dict[str, Any] = schema.get("$defs", {})
    return defs


def build_document(registry: Registry, version: str = "1") -> dict[str, Any]:
    examples = request_examples(registry)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, examples)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Chorus",
            "version": version,
            "description": "A self-hosted multi-model LLM gateway: chat, compare, blend, "
                           "judge and mesh failover behind one key. Errors are "
                           "`{\"error\": {code, message, param?}}` (OpenAI's shape under "
                           "`/v1`).",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearer": []}],
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in OPS)],
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a `ch_sk_…` key"}},
        },
    }


@cache
def _document() -> dict[str, Any]:
    return build_document(get_registry())


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(_document())
