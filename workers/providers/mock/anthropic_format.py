"""Anthropic Messages wire format for the mock: the event sequence the SDK expects."""

from __future__ import annotations

from typing import Any

from workers.providers.mock.plan import MockRequest, Plan, ToolSpec, flatten_text
from workers.providers.mock.stream import BadRequestBody, Unit, sse

STOP_REASONS = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool": "tool_use",
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _tool_results(messages: list[Any]) -> list[str]:
    out: list[str] = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            out += [
                flatten_text(b.get("content"))
                for b in content
                if isinstance(b, dict) and b.get("type") == "tool_result"
            ]
    return out


class AnthropicFormat:
    name = "anthropic"

    def parse_request(self, body: dict[str, Any], url_model: str | None) -> MockRequest:
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise BadRequestBody("model: Field required")
        if not isinstance(messages, list) or not messages:
            raise BadRequestBody("messages: at least one message is required")
        if not isinstance(body.get("max_tokens"), int):
            raise BadRequestBody("max_tokens: Field required")
        tools = [
            ToolSpec(str(t.get("name")), t.get("input_schema") or {})
            for t in body.get("tools") or []
            if isinstance(t, dict) and t.get("name")
        ]
        choice = body.get("tool_choice") or {}
        kind = choice.get("type", "auto") if isinstance(choice, dict) else "auto"
        results = _tool_results(messages)
        texts = [flatten_text(body.get("system"))]
        texts += [flatten_text(m.get("content")) for m in messages if isinstance(m, dict)]
        return MockRequest(
            model=model,
            stream=bool(body.get("stream")),
            prompt_text="\n".join(t for t in texts if t),
            max_tokens=int(body["max_tokens"]),
            stop=[s for s in body.get("stop_sequences") or [] if isinstance(s, str)],
            tools=tools,
            tool_choice={"none": "none", "any": "required", "tool": "required"}.get(kind, "auto"),
            forced_tool=choice.get("name") if kind == "tool" else None,
            tool_result=results[-1] if results else None,
        )

    def _usage(self, plan: Plan) -> dict[str, Any]:
        return {
            "input_tokens": plan.prompt_tokens,
            "output_tokens": plan.completion_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    def _message(self, plan: Plan, content: list[Any], final: bool) -> dict[str, Any]:
        usage = self._usage(plan)
        if not final:
            usage["output_tokens"] = 1
        return {
            "id": f"msg_{plan.id}",
            "type": "message",
            "role": "assistant",
            "model": plan.model,
            "content": content,
            "stop_reason": STOP_REASONS[plan.finish] if final else None,
            "stop_sequence": plan.stop_sequence if final else None,
            "usage": usage,
        }

    def render_stream(self, plan: Plan, req: MockRequest) -> list[Unit]:
        start = {"type": "message_start", "message": self._message(plan, [], final=False)}
        units = [Unit(sse(start, "message_start"), "head")]
        call = plan.tool_call
        if call is None:
            block: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": t} for t in plan.tokens]
        else:
            block = {"type": "tool_use", "id": f"toolu_{call.id}", "name": call.name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": f} for f in call.fragments]
        block_start = {"type": "content_block_start", "index": 0, "content_block": block}
        units.append(Unit(sse(block_start, "content_block_start"), "start"))
        units.append(Unit(sse({"type": "ping"}, "ping"), "start"))
        units += [
            Unit(
                sse({"type": "content_block_delta", "index": 0, "delta": d}, "content_block_delta"),
                "token",
            )
            for d in deltas
        ]
        stop = {"type": "content_block_stop", "index": 0}
        message_delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": STOP_REASONS[plan.finish],
                "stop_sequence": plan.stop_sequence,
            },
            "usage": {"output_tokens": plan.completion_tokens},
        }
        units.append(Unit(sse(stop, "content_block_stop"), "tail"))
        units.append(Unit(sse(message_delta, "message_delta"), "tail"))
        units.append(Unit(sse({"type": "message_stop"}, "message_stop"), "tail"))
        return units

    def render_body(self, plan: Plan, req: MockRequest) -> dict[str, Any]:
        call = plan.tool_call
        content: list[dict[str, Any]]
        if call is None:
            content = [{"type": "text", "text": plan.text}]
        else:
            content = [
                {
                    "type": "tool_use",
                    "id": f"toolu_{call.id}",
                    "name": call.name,
                    "input": call.args,
                }
            ]
        return self._message(plan, content, final=True)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def stream_error(self, status: int, message: str) -> bytes:
        return sse(self.error_body(status, message), "error")
