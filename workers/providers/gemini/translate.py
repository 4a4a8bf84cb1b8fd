"""OpenAI-style messages, tools and options rewritten as a Gemini ``generateContent`` body."""

from __future__ import annotations

import json
from typing import Any

from workers.providers.base import ChatCall, parse_arguments

# Gemini 3 wants a thought signature on replayed function calls; Chorus keeps none, and
# Google documents this value for history that did not come from the model itself.
REPLAY_SIGNATURE = "skip_thought_signature_validator"
MAX_STOP_SEQUENCES = 5
OPENING_USER_TURN = "Continue."


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("text")
        )
    return "" if content is None else str(content)


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and part.get("text"):
            parts.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                mime, data = url[5:].split(";base64,", 1)
                parts.append({"inlineData": {"mimeType": mime, "data": data}})
            elif url:
                parts.append({"fileData": {"fileUri": url}})
    return parts


def _function_response(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    content = _text(message.get("content"))
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    response = value if isinstance(value, dict) else {"result": content}
    name = names.get(str(message.get("tool_call_id")), message.get("name") or "tool")
    return {"functionResponse": {"name": name, "response": response}}


def contents(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(system instruction text, alternating user/model contents)."""
    system: list[str] = []
    names: dict[str, str] = {}
    turns: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        parts: list[dict[str, Any]]
        if role in ("system", "developer"):
            system.append(_text(m.get("content")))
            continue
        if role == "assistant":
            gemini_role, parts = "model", _parts(m.get("content"))
            for i, tc in enumerate(m.get("tool_calls") or []):
                fn = tc.get("function") or {}
                names[str(tc.get("id"))] = fn.get("name", "")
                call: dict[str, Any] = {
                    "functionCall": {
                        "name": fn.get("name", ""),
                        "args": parse_arguments(fn.get("arguments")),
                    }
                }
                if i == 0:
                    call["thoughtSignature"] = REPLAY_SIGNATURE
                parts.append(call)
        elif role == "tool":
            gemini_role, parts = "user", [_function_response(m, names)]
        else:
            gemini_role, parts = "user", _parts(m.get("content"))
        if not parts:
            continue
        if turns and turns[-1]["role"] == gemini_role:
            turns[-1]["parts"].extend(parts)
        else:
            turns.append({"role": gemini_role, "parts": parts})
    system_text = "\n\n".join(s for s in system if s)
    if not turns and system_text:
        return "", [{"role": "user", "parts": [{"text": system_text}]}]
    if turns and turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "parts": [{"text": OPENING_USER_TURN}]})
    return system_text, turns


def generation_config(call: ChatCall) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if call.temperature is not None:
        config["temperature"] = call.temperature
    if call.top_p is not None:
        config["topP"] = call.top_p
    if call.max_tokens is not None:
        config["maxOutputTokens"] = call.max_tokens
    if call.stop:
        config["stopSequences"] = call.stop[:MAX_STOP_SEQUENCES]
    fmt = call.response_format or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            config["responseJsonSchema"] = schema
    return config


def tools(openai_tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    declarations = []
    for tool in openai_tools:
        fn = tool.get("function") or tool
        decl: dict[str, Any] = {"name": fn.get("name", "")}
        if fn.get("description"):
            decl["description"] = fn["description"]
        if fn.get("parameters"):
            # The JSON-schema field takes OpenAI's schemas as they are (``parameters``
            # wants Google's OpenAPI subset).
            decl["parametersJsonSchema"] = fn["parameters"]
        declarations.append(decl)
    return [{"functionDeclarations": declarations}]


def tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    config: dict[str, Any]
    if choice == "none":
        config = {"mode": "NONE"}
    elif choice == "required":
        config = {"mode": "ANY"}
    elif isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        config = {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    else:
        config = {"mode": "AUTO"}
    return {"functionCallingConfig": config}
