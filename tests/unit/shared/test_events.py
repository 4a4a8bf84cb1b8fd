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
