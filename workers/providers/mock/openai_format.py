"""OpenAI chat-completions wire format for the mock, shaped exactly as the SDK parses it."""

from __future__ import annotations

import json
import time
from typing import Any

from workers.providers.mock.plan import MockRequest, Plan, ToolSpec, flatten_text
from workers.providers.mock.stream import BadRequestBody, Unit, sse

FINISH = {"stop": "stop", "stop_sequence": "stop", "length": "length", "tool": "tool_calls"}
ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


_SLOT = "<chorus-mock-token>"
_SLOT_JSON = json.dumps(_SLOT).encode()


class OpenAIFormat:
    name = "openai"

    def parse_request(self, body: dict[str, Any], url_model: str | None) -> MockRequest:
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise BadRequestBody("you must provide a model parameter")
        if not isinstance(messages, list) or not messages:
            raise BadRequestBody("messages must be a non-empty array")
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
        tools = [
            ToolSpec(str(f.get("name")), f.get("parameters") or {})
            for t in body.get("tools") or []
            if isinstance(t, dict) and isinstance(f := t.get("function"), dict)
        ]
        choice = body.get("tool_choice")
        forced = None
        if isinstance(choice, dict):
            forced = (choice.get("function") or {}).get("name")
            choice = "required"
        results = [m for m in messages if isinstance(m, dict) and m.get("role") == "tool"]
        fmt = body.get("response_format") or {}
        fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt_type == "json_schema" else None
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        return MockRequest(
            model=model,
            stream=bool(body.get("stream")),
            prompt_text=flatten_text([m.get("content") for m in messages if isinstance(m, dict)]),
            max_tokens=None if max_tokens is None else int(max_tokens),
            stop=stops,
            tools=tools,
            tool_choice=choice if choice in ("none", "required") else "auto",
            forced_tool=forced,
            tool_result=flatten_text(results[-1].get("content")) if results else None,
            json_mode=fmt_type in ("json_object", "json_schema"),
            json_schema=schema,
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        )

    def _usage(self, plan: Plan) -> dict[str, int]:
        return {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
        }

    def render_stream(self, plan: Plan, req: MockRequest) -> list[Unit]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": f"chatcmpl-{plan.id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": plan.model,
                "system_fingerprint": "fp_mock",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if req.include_usage:
                out["usage"] = None
            return out

        call = plan.tool_call
        units: list[Unit] = []
        if call is None:
            units.append(
                Unit(sse(chunk({"role": "assistant", "content": "", "refusal": None})), "head")
            )
            # One chunk encoded, its text swapped per token: a stream of many tokens
            # would otherwise cost the mock more CPU than its readers spend on it.
            head, _, tail = sse(chunk({"content": _SLOT})).partition(_SLOT_JSON)
            units += [Unit(b"".join((head, json.dumps(t).encode(), tail)), "token")
                      for t in plan.tokens]
        else:
            first = {
                "index": 0,
                "id": f"call_{call.id}",
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            units.append(Unit(sse(chunk({"role": "assistant", "content": None})), "head"))
            units.append(Unit(sse(chunk({"tool_calls": [first]})), "start"))
            units += [
                Unit(
                    sse(chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]})),
                    "token",
                )
                for f in call.fragments
            ]
        units.append(Unit(sse(chunk({}, FINISH[plan.finish])), "tail"))
        if req.include_usage:
            last = chunk({})
            last["choices"] = []
            last["usage"] = self._usage(plan)
            units.append(Unit(sse(last), "tail"))
        units.append(Unit(b"data: [DONE]\n\n", "tail"))
        return units

    def render_body(self, plan: Plan, req: MockRequest) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": plan.text, "refusal": None}
        if plan.tool_call is not None:
            call = plan.tool_call
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"call_{call.id}",
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
            ]
        return {
            "id": f"chatcmpl-{plan.id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": plan.model,
            "system_fingerprint": "fp_mock",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": FINISH[plan.finish],
                }
            ],
            "usage": self._usage(plan),
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind, code = ERROR_TYPES.get(status, ("server_error", None))
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def stream_error(self, status: int, message: str) -> bytes:
        return sse(self.error_body(status, message))


def models_list(names: list[str]) -> dict[str, Any]:
    """``GET /v1/models``; also carries the fields Anthropic's SDK reads on the same path."""
    created = 1_735_689_600
    data = [
        {
            "id": n,
            "object": "model",
            "created": created,
            "owned_by": "chorus-mock",
            "type": "model",
            "display_name": n,
            "created_at": "2025-01-01T00:00:00Z",
        }
        for n in names
    ]
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "first_id": names[0] if names else None,
        "last_id": names[-1] if names else None,
    }
