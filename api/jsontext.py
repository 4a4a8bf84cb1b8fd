"""Caller JSON read one way everywhere: unparseable or too deep is a 400, never a 500."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic_core import from_json

from api.errors import ApiError

# pydantic's parser stops at this depth, so anything it reads can be dumped again and
# validated without Python's recursion limit coming into play.
MAX_DEPTH = 200
# Characters JSON forbids raw inside strings, which a lenient JSONL writer may leave in.
RAW_CONTROL = re.compile(r"[\x00-\x1f]")


def invalid_json(what: str, detail: str, param: str | None = None) -> ApiError:
    if "recursion limit" in detail:
        detail = f"arrays and objects nest more than {MAX_DEPTH} levels deep"
    return ApiError(400, "invalid_json", f"{what} is not valid JSON: {detail}", param)


def decode(raw: str | bytes, what: str = "body", param: str | None = None) -> Any:
    """``raw`` parsed as strict JSON (UTF-8 if bytes), at most ``MAX_DEPTH`` deep."""
    try:
        return from_json(raw)
    except ValueError as exc:
        raise invalid_json(what, str(exc), param) from exc


def split_jsonl(text: str) -> list[str]:
    """The non-blank lines of a JSONL text. Lines end at ``\\n`` (``\\r\\n`` too) and
    nowhere else: U+2028, U+0085, form feeds and the like are text inside a line."""
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [line for line in lines if line.strip(" \t\r")]


def jsonl_line(line: str, param: str) -> str:
    """One JSONL line as strict JSON text. Control characters left raw inside its strings
    (the line is unambiguous: it ends only at ``\\n``) are accepted and escaped."""
    if RAW_CONTROL.search(line) is None:
        return line
    try:
        return json.dumps(json.loads(line, strict=False))
    except (ValueError, RecursionError) as exc:
        detail = "recursion limit" if isinstance(exc, RecursionError) else str(exc)
        raise invalid_json(param, detail, param) from exc
