"""schemathesis against ``/openapi.json`` of a running API process: every documented
operation, positive and negative inputs, a fixed seed and few examples; no 5xx and no
response the document does not describe."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.registry import get_registry
from tests.stack import Stack

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
MAX_EXAMPLES = 8
VERDICT = json.dumps({"scores": {"A": {"score": 7, "reason": "clear"},
                                 "B": {"score": 5, "reason": "vague"}}})


@schemathesis.serializer("application/jsonl")
def to_jsonl(_ctx: Any, value: Any) -> bytes:
    """A batch body (``POST /api/v1/batches``): its text as is; anything else as JSON."""
    if isinstance(value, str):
        return value.encode()
    return (json.dumps(value) + "\n").encode()


@pytest.fixture(scope="module")
def fuzz_key(stack: Stack) -> str:
    return stack.create_key(credits=10_000_000)


def check_operation(strategy: Any, examples: int, headers: dict[str, str]) -> None:
    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(strategy)
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    run()


def test_api_matches_its_document(stack: Stack, fuzz_key: str, mock: httpx.Client) -> None:
    # Answers come back at once, so valid job requests finish in milliseconds.
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 0, "token_ms": 0})
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    schema.config.update(base_url=stack.url)
    # The judge of the documented example gives a verdict it can parse (the mock's own
    # words are not one), so that example runs the whole judge pipeline.
    judge_example = schema.raw_schema["paths"]["/api/v1/judge"]["post"]["requestBody"][
        "content"]["application/json"]["example"]
    mock.post("/_mock/config", json={
        "model": get_registry().get(judge_example["judge"]).upstream, "reply": VERDICT})
    headers = {"Authorization": f"Bearer {fuzz_key}"}
    operations = [r.ok() for r in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /api/v1/chat", "POST /v1/chat/completions", "GET /api/v1/ws",
            "GET /api/v1/jobs/{job_id}/events"} <= labels
    failures: dict[str, str] = {}
    for op in operations:
        strategies = [("example", s, 1) for s in schema.get_strategies_from_examples(op)]
        strategies += [(mode.value, op.as_strategy(mode), MAX_EXAMPLES)
                       for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
        for name, strategy, count in strategies:
            try:
                check_operation(strategy, count, headers)
            except Unsatisfiable:
                # An operation without parameters or body has no invalid input.
                if name != GenerationMode.NEGATIVE.value:
                    failures[f"{op.label} ({name})"] = "no input could be generated"
            except Exception as exc:
                failures[f"{op.label} ({name})"] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_nul_bytes_are_client_errors(api: httpx.Client) -> None:
    """PostgreSQL refuses NUL in text: such input must be a 4xx, not a 500 (found fuzzing)."""
    for path in ("/api/v1/jobs/%00", "/api/v1/jobs/a%00b/events"):
        r = api.get(path)
        assert r.status_code == 400 and r.json()["error"]["param"] == "job_id"
    r = api.post("/api/v1/chat", json={"model": "gpt-5-mini", "session_id": "s\u0000",
                                       "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "session_id"
    r = api.post("/v1/chat/completions", json={
        "model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}],
        "chorus": {"session_id": "s\u0000"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chorus.session_id"
