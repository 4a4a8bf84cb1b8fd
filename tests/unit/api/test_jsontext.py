"""Caller JSON: the JSONL splitter ends lines at \\n only, a lenient line is made strict,
and too deep, broken or non-UTF-8 JSON is a 400 invalid_json."""

from __future__ import annotations

import json

import pytest

from api.errors import ApiError
from api.jsontext import MAX_DEPTH, decode, jsonl_line, split_jsonl


def test_lines_end_at_newline_only() -> None:
    text = 'a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\x1dh\x1ei\n{"x": 1}'
    assert split_jsonl(text) == ['a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\x1dh\x1ei', '{"x": 1}']
    assert text.splitlines() != split_jsonl(text)


def test_crlf_endings_blank_lines_and_a_missing_final_newline() -> None:
    assert split_jsonl("one\r\ntwo\r\n\r\n \t \n\nthree") == ["one", "two", "three"]
    assert split_jsonl("") == []
    assert split_jsonl("\n\r\n") == []


def test_a_carriage_return_inside_a_line_is_kept() -> None:
    assert split_jsonl("a\rb\n") == ["a\rb"]


def test_a_strict_line_is_passed_through() -> None:
    text = json.dumps({"s": "a\u2028b\x85"}, ensure_ascii=False)
    assert jsonl_line(text, "lines.0") is text


def test_raw_control_characters_inside_strings_are_accepted_and_escaped() -> None:
    strict = jsonl_line('{"s": "a\x0bb\x0cc\x1cd\te"}', "lines.3")
    assert json.loads(strict) == {"s": "a\x0bb\x0cc\x1cd\te"}
    assert "\x0b" not in strict and "\t" not in strict


@pytest.mark.parametrize("text", ['{"s": "a\x0b', "[" * 5000 + "\x0b" + "]" * 5000])
def test_a_lenient_line_that_is_still_not_json_is_invalid_json(text: str) -> None:
    with pytest.raises(ApiError) as err:
        jsonl_line(text, "lines.3")
    assert (err.value.status, err.value.code, err.value.param) == (400, "invalid_json",
                                                                   "lines.3")


@pytest.mark.parametrize(("raw", "words"), [
    (b"[" * 10_000 + b"]" * 10_000, f"{MAX_DEPTH} levels"),
    (b'{"a": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}", f"{MAX_DEPTH} levels"),
    (b"{not json", "not valid JSON"),
    (b'"\xff"', "not valid JSON"),
    (b"", "not valid JSON"),
])
def test_bad_json_is_a_400_invalid_json(raw: bytes, words: str) -> None:
    with pytest.raises(ApiError) as err:
        decode(raw, "message", "p")
    assert (err.value.status, err.value.code, err.value.param) == (400, "invalid_json", "p")
    assert words in err.value.message and err.value.message.startswith("message ")


def test_json_just_under_the_depth_limit_decodes() -> None:
    depth = MAX_DEPTH - 1
    assert decode(b"[" * depth + b"]" * depth) is not None
