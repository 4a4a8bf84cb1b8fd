"""The OpenAPI document: every route of the app is in it, it loads, its examples are valid."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import schemathesis
from flask import Flask

from api.app import create_app
from api.openai_compat import to_chat_request
from api.openapi import OPS, REQUEST_MODELS, build_document, request_examples
from shared.registry import get_registry
from shared.schemas import ChatCompletionRequest, Common


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app()


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return build_document(get_registry())


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_route_is_documented(app: Flask, doc: dict[str, Any]) -> None:
    routes = {
        (m.lower(), _openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for m in rule.methods or ()
        if m not in ("HEAD", "OPTIONS")
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes - documented == set(), "add an Op row in api/openapi.py"
    assert documented - routes == set(), "documented but not served"


def test_document_loads_and_every_operation_parses(doc: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(doc)
    results = list(schema.get_all_operations())
    assert len(results) == len(OPS)
    assert all(r.ok() for r in results)
    assert doc["openapi"].startswith("3.1")


def test_request_examples_are_valid_requests(doc: dict[str, Any]) -> None:
    registry = get_registry()
    examples = request_examples(registry)
    models = {m.__name__: m for m in REQUEST_MODELS}
    assert set(examples) == set(models)
    for name, body in examples.items():
        req = models[name].model_validate_json(json.dumps(body), strict=True)
        if isinstance(req, ChatCompletionRequest):
            req = to_chat_request(req)
        ids = req.model_ids() if isinstance(req, Common) else []
        assert all(i in registry for i in ids), (name, ids)
    body = doc["paths"]["/api/v1/chat"]["post"]["requestBody"]["content"]["application/json"]
    assert body["example"] == examples["ChatRequest"]
    assert body["schema"] == {"$ref": "#/components/schemas/ChatRequest"}


def test_errors_and_streams_are_described(doc: dict[str, Any]) -> None:
    chat = doc["paths"]["/api/v1/chat"]["post"]["responses"]
    assert set(chat) == {"200", "400", "401", "402", "413", "429", "502", "503"}
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["402"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/InsufficientCredits")
    assert "Retry-After" in chat["429"]["headers"]
    compat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert all(r["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
               for code, r in compat.items() if code != "200")
    assert doc["paths"]["/healthz"]["get"]["security"] == []
