"""OpenAI-style messages and tools rewritten into the Messages API's stricter shape.

The Messages API wants the system prompt apart, roles strictly alternating and starting
with ``user``, tool calls as ``tool_use`` blocks and tool results as ``tool_result`` blocks
at the head of a user turn, no empty text blocks, and no trailing space in a final
assistant (prefill) turn.
"""

from __future__ import annotations

import json
from typing import Any

from workers.providers.base import parse_arguments

# Sent only when a conversation opens with an assistant turn, which the API refuses.
OPENING_USER_TURN = "Continue."


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("text")
        )
    return "" if content is None else str(content)


def _image(part: dict[str, Any]) -> dict[str, Any] | None:
    url = (part.get("image_url") or {}).get("url", "")
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url:
        return {"type": "image", "source": {"type": "url", "url": url}}
    return None


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and str(part.get("text", "")).strip():
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url" and (image := _image(part)) is not None:
            blocks.append(image)
        elif kind in ("image", "document", "tool_use", "tool_result"):
            blocks.append(part)  # already in Anthropic's form
    return blocks


def _turn(message: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    role = message.get("role")
    if role == "tool":
        result = {
            "type": "tool_result",
            "tool_use_id": message.get("tool_call_id", ""),
            "content": _text(message.get("content")),
        }
        return "user", [result]
    if role == "assistant":
        blocks = _content_blocks(message.get("content"))
        for tc in message.get("tool_calls") or []:
            fn = tc.get("function") or {}
            blocks.append(
                {
                    "type": "tool_use",
                    "id": tc.get("id", ""),
                    "name": fn.get("name", ""),
                    "input": parse_arguments(fn.get("arguments")),
                }
            )
        return "assistant", blocks
    if role == "user":
        return "user", _content_blocks(message.get("content"))
    return None


def split_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(system text, alternating Anthropic messages)."""
    system = [_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    turns: list[dict[str, Any]] = []
    for message in messages:
        turn = _turn(message)
        if turn is None or not turn[1]:
            continue
        role, blocks = turn
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": list(blocks)})
    for t in turns:
        if t["role"] == "user":
            # Tool results must open their user turn; the sort is stable for the rest.
            t["content"].sort(key=lambda b: b.get("type") != "tool_result")
    system_text = "\n\n".join(s for s in system if s)
    if not turns and system_text:
        # A system-only call: the API needs a user turn, so the instructions become one.
        return "", [{"role": "user", "content": [{"type": "text", "text": system_text}]}]
    if turns and turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING_USER_TURN}]})
    if turns and turns[-1]["role"] == "assistant":
        last = turns[-1]["content"][-1]
        if last.get("type") == "text":
            last["text"] = last["text"].rstrip()
    return system_text, turns


def tools(openai_tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in openai_tools:
        if "input_schema" in tool:
            out.append(tool)
            continue
        fn = tool.get("function") or tool
        entry: dict[str, Any] = {
            "name": fn.get("name", ""),
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            entry["description"] = fn["description"]
        out.append(entry)
    return out


def tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice in (None, "auto"):
        return {"type": "auto"} if choice else None
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if name:
            return {"type": "tool", "name": name}
    return None


def json_instruction(response_format: dict[str, Any] | None) -> str:
    """The Messages API has no JSON mode: ask for it in the system prompt instead."""
    if not response_format or response_format.get("type") not in ("json_object", "json_schema"):
        return ""
    text = "Respond with one valid JSON object and nothing else."
    schema = (response_format.get("json_schema") or {}).get("schema")
    if schema:
        text += f" It must match this JSON schema: {json.dumps(schema)}"
    return text
