"""Gemini generateContent wire format for the mock (REST, camelCase like the real API)."""

from __future__ import annotations

import json
from typing import Any

from workers.providers.mock.plan import MockRequest, Plan, ToolSpec, flatten_text
from workers.providers.mock.stream import BadRequestBody, Unit, sse

FINISH = {"stop": "STOP", "stop_sequence": "STOP", "length": "MAX_TOKENS", "tool": "STOP"}
STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _get(obj: Any, camel: str, snake: str) -> Any:
    """The REST API accepts both spellings; the SDKs send camelCase."""
    if not isinstance(obj, dict):
        return None
    return obj.get(camel, obj.get(snake))


def _declarations(body: dict[str, Any]) -> list[ToolSpec]:
    out: list[ToolSpec] = []
    for tool in body.get("tools") or []:
        for decl in _get(tool, "functionDeclarations", "function_declarations") or []:
            schema = decl.get("parameters") or _get(
                decl, "parametersJsonSchema", "parameters_json_schema"
            )
            out.append(ToolSpec(str(decl.get("name")), schema or {}))
    return out


def _result_text(response: Any) -> str:
    """A functionResponse is any JSON object; ``{"result": ...}`` is the common wrapper."""
    if isinstance(response, dict) and isinstance(response.get("result"), str):
        return str(response["result"])
    return json.dumps(response)


class GeminiFormat:
    name = "gemini"

    def parse_request(self, body: dict[str, Any], url_model: str | None) -> MockRequest:
        contents = body.get("contents")
        if not url_model:
            raise BadRequestBody("model is required in the path")
        if not isinstance(contents, list) or not contents:
            raise BadRequestBody("contents is not specified")
        parts = [p for c in contents if isinstance(c, dict) for p in c.get("parts") or []]
        results = [
            _result_text(_get(p, "functionResponse", "function_response").get("response"))
            for p in parts
            if isinstance(p, dict) and _get(p, "functionResponse", "function_response")
        ]
        texts = [flatten_text(_get(body, "systemInstruction", "system_instruction"))]
        texts += [flatten_text(p.get("text")) for p in parts if isinstance(p, dict)]
        config = _get(body, "generationConfig", "generation_config") or {}
        calling = (
            _get(
                _get(body, "toolConfig", "tool_config"),
                "functionCallingConfig",
                "function_calling_config",
            )
            or {}
        )
        mode = str(calling.get("mode", "AUTO")).upper()
        allowed = _get(calling, "allowedFunctionNames", "allowed_function_names") or []
        max_tokens = _get(config, "maxOutputTokens", "max_output_tokens")
        mime = _get(config, "responseMimeType", "response_mime_type")
        schema = _get(config, "responseJsonSchema", "response_json_schema") or _get(
            config, "responseSchema", "response_schema"
        )
        return MockRequest(
            model=url_model,
            stream=False,
            prompt_text="\n".join(t for t in texts if t),
            max_tokens=None if max_tokens is None else int(max_tokens),
            stop=list(_get(config, "stopSequences", "stop_sequences") or []),
            tools=_declarations(body),
            tool_choice={"NONE": "none", "ANY": "required"}.get(mode, "auto"),
            forced_tool=allowed[0] if mode == "ANY" and len(allowed) == 1 else None,
            tool_result=results[-1] if results else None,
            json_mode=mime == "application/json",
            json_schema=schema if isinstance(schema, dict) else None,
        )

    def _usage(self, plan: Plan, final: bool) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": plan.prompt_tokens}
        if final:
            usage["candidatesTokenCount"] = plan.completion_tokens
        usage["totalTokenCount"] = plan.prompt_tokens + (plan.completion_tokens if final else 0)
        return usage

    def _response(
        self, plan: Plan, parts: list[dict[str, Any]], finish: str | None, final: bool
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage(plan, final),
            "modelVersion": plan.model,
            "responseId": plan.id,
        }

    def _call_part(self, plan: Plan) -> dict[str, Any]:
        assert plan.tool_call is not None
        return {"functionCall": {"name": plan.tool_call.name, "args": plan.tool_call.args}}

    def render_stream(self, plan: Plan, req: MockRequest) -> list[Unit]:
        units: list[Unit] = []
        if plan.tool_call is None:
            units += [
                Unit(sse(self._response(plan, [{"text": t}], None, False)), "token")
                for t in plan.tokens
            ]
        else:
            # Gemini sends a function call whole, in one chunk.
            units.append(
                Unit(sse(self._response(plan, [self._call_part(plan)], None, False)), "token")
            )
        final = self._response(plan, [{"text": ""}], FINISH[plan.finish], True)
        units.append(Unit(sse(final), "tail"))
        return units

    def render_body(self, plan: Plan, req: MockRequest) -> dict[str, Any]:
        parts = [{"text": plan.text}] if plan.tool_call is None else [self._call_part(plan)]
        return self._response(plan, parts, FINISH[plan.finish], True)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return {"error": {"code": status, "message": message, "status": kind}}

    def stream_error(self, status: int, message: str) -> bytes:
        return sse(self.error_body(status, message))
