"""Read a Chorus SSE stream the way a client would: ids, JSON events, the [DONE] line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Stream:
    status: int
    headers: httpx.Headers
    ids: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    @property
    def text(self) -> str:
        return "".join(e.get("delta", "") for e in self.events if e.get("event") == "chunk")

    @property
    def final(self) -> dict[str, Any]:
        assert self.events and self.events[-1].get("final"), self.events[-3:]
        return self.events[-1]


def iter_sse(resp: httpx.Response) -> Iterator[tuple[int | None, str]]:
    event_id: int | None = None
    for line in resp.iter_lines():
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            yield event_id, line[6:]
            event_id = None


def read_stream(resp: httpx.Response, stop_after: int | None = None) -> Stream:
    out = Stream(resp.status_code, resp.headers)
    if resp.status_code != 200:
        resp.read()
        return out
    for event_id, data in iter_sse(resp):
        if data == "[DONE]":
            out.done = True
            break
        assert event_id is not None, data
        out.ids.append(event_id)
        out.events.append(json.loads(data))
        if stop_after is not None and len(out.events) >= stop_after:
            break
    return out


def stream_post(client: httpx.Client, path: str, body: dict[str, Any], **kw: Any) -> Stream:
    with client.stream("POST", path, json={**body, "stream": True}, **kw) as resp:
        return read_stream(resp)
