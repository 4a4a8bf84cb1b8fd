"""The event wire format: SSE frames, final-event detection, pub/sub payloads."""

from __future__ import annotations

import json

from shared import events


def test_final_event_is_detected_by_its_leading_key() -> None:
    data = events.encode(events.final_event("done", job_id="j", status="succeeded"))
    assert events.is_final(data)
    assert json.loads(data)["final"] is True
    chunk = events.encode({"event": "chunk", "delta": '{"final":true'})
    assert not events.is_final(chunk)


def test_sse_frame_and_split_message() -> None:
    assert events.sse_frame(7, '{"a":1}') == b'id: 7\ndata: {"a":1}\n\n'
    assert events.split_message(b'12\n{"x":"a\\nb"}') == (12, '{"x":"a\\nb"}')


def test_encode_keeps_unicode_compact() -> None:
    assert events.encode({"delta": "héllo ✓"}) == '{"delta":"héllo ✓"}'


def test_event_ids_are_ascii_whole_numbers_below_two_to_the_63() -> None:
    assert events.parse_event_id("0") == 0
    assert events.parse_event_id("42") == 42
    assert events.parse_event_id(str(2**63 - 1)) == 2**63 - 1
    assert events.parse_event_id("0000" + str(2**63 - 1)) == 2**63 - 1
    for bad in ("-1", "abc", "", "1.5", "+3", " 4", "1_000", "٣", str(2**63), "9" * 5000):
        assert events.parse_event_id(bad) is None, bad


def test_reconnect_notice_is_not_final_and_sets_the_retry_time() -> None:
    data = events.encode(events.reconnect_event("j", 12))
    assert not events.is_final(data)
    notice = json.loads(data)
    assert notice["event"] == "reconnect" and notice["last_event_id"] == 12
    assert notice["retry_ms"] == events.RECONNECT_RETRY_MS
    assert events.retry_frame() == f"retry: {events.RECONNECT_RETRY_MS}\n\n".encode()
