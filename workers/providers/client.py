"""The transport shared by every adapter: one pooled httpx client, SSE parsing, timeouts."""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from httpx_sse import EventSource, SSEError

from shared.registry import ModelSpec
from workers.providers.base import (
    ChatCall,
    Completion,
    Delta,
    StreamAssembler,
    Usage,
    estimate_tokens,
    messages_text,
)
from workers.providers.errors import (
    ProviderError,
    StreamBroken,
    UpstreamConnectError,
    UpstreamTimeout,
)
from workers.providers.read_pacing import PacedTransport, Pacer
from workers.providers.registry import get_adapter

if TYPE_CHECKING:
    from workers.stopper import Guard


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    # Longest silence allowed between two bytes of a response, first token included.
    idle: float = 60.0


def make_http_client(max_connections: int = 1000) -> httpx.Client:
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=200)
    return httpx.Client(transport=PacedTransport(limits),
                        timeout=httpx.Timeout(60.0, connect=5.0))


def _timeout(t: Timeouts) -> httpx.Timeout:
    return httpx.Timeout(connect=t.connect, read=t.idle, write=t.idle, pool=t.connect)


def stream_chat(
    http: httpx.Client,
    model: ModelSpec,
    call: ChatCall,
    *,
    api_key: str | None = None,
    timeouts: Timeouts = Timeouts(),
    pacer: Pacer | None = None,
    guard: Guard | None = None,
) -> Generator[Delta, None, None]:
    """Yield deltas as the provider streams them; raise a ``ProviderError`` on any failure.

    Deltas are normalised by ``StreamAssembler``: tool calls numbered 0, 1, … with ids, and
    usage held back and sent once, as the very last delta (estimated, and flagged so, when
    the provider reported none). Iterate to the end to get it.

    A stream that ends without a finish reason is ``StreamBroken``: a provider that hangs
    up mid-answer must never look like a short, successful one. Every mid-stream error
    carries the text streamed so far in ``partial_text``. With a ``pacer``, a busy
    process reads the stream at most once per pace after its first token; a ``guard``
    learns the stream's connection, to shut it if the job is cancelled
    (see ``workers.stopper``).
    """
    adapter = get_adapter(model.provider.adapter)
    key = model.provider.api_key() if api_key is None else api_key
    req = adapter.build_request(model, call, stream=True, api_key=key)
    assembler = StreamAssembler()
    try:
        with http.stream(
            req.method, req.url, json=req.json, headers=req.headers, timeout=_timeout(timeouts)
        ) as resp:
            if resp.status_code >= 400:
                body = resp.read().decode("utf-8", "replace")
                raise adapter.map_error(resp.status_code, body, resp.headers)
            if guard is not None:
                guard.opened(resp)
            with (pacer or Pacer()).streaming(resp) as pace:
                for sse in EventSource(resp).iter_sse():
                    for delta in adapter.parse_stream_event(sse.event, sse.data):
                        out = assembler.feed(delta)
                        if out is not None:
                            pace.token_seen()
                            yield out
    except ProviderError as exc:
        exc.partial_text = assembler.text
        raise
    except httpx.TimeoutException as exc:
        raise _partial(
            UpstreamTimeout(f"provider timed out ({type(exc).__name__})"), assembler
        ) from exc
    except httpx.ConnectError as exc:
        raise UpstreamConnectError(f"cannot connect to provider: {exc}") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.StreamError, SSEError) as exc:
        raise _partial(StreamBroken(f"provider stream broke: {exc}"), assembler) from exc
    except httpx.HTTPError as exc:
        raise _partial(
            UpstreamConnectError(f"provider transport failed: {exc}"), assembler
        ) from exc
    if assembler.finish_reason is None:
        raise _partial(StreamBroken("provider stream ended without a finish reason"), assembler)
    yield Delta(usage=assembler.final_usage(call.messages))


def _partial(exc: ProviderError, assembler: StreamAssembler) -> ProviderError:
    exc.partial_text = assembler.text
    return exc


def complete_chat(
    http: httpx.Client,
    model: ModelSpec,
    call: ChatCall,
    *,
    api_key: str | None = None,
    timeouts: Timeouts = Timeouts(),
) -> Completion:
    """One non-streaming call (health probes, tools that need a whole answer)."""
    adapter = get_adapter(model.provider.adapter)
    key = model.provider.api_key() if api_key is None else api_key
    req = adapter.build_request(model, call, stream=False, api_key=key)
    try:
        resp = http.request(
            req.method, req.url, json=req.json, headers=req.headers, timeout=_timeout(timeouts)
        )
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"provider timed out ({type(exc).__name__})") from exc
    except httpx.ConnectError as exc:
        raise UpstreamConnectError(f"cannot connect to provider: {exc}") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise StreamBroken(f"provider dropped the connection: {exc}") from exc
    except httpx.HTTPError as exc:
        raise UpstreamConnectError(f"cannot reach provider: {exc}") from exc
    if resp.status_code >= 400:
        raise adapter.map_error(resp.status_code, resp.text, resp.headers)
    try:
        body = resp.json()
    except json.JSONDecodeError as exc:
        raise StreamBroken("provider sent a body that is not JSON", raw_body=resp.text) from exc
    if not isinstance(body, dict):
        raise StreamBroken("provider sent a body that is not a JSON object", raw_body=resp.text)
    completion = adapter.parse_response(body)
    if completion.tool_calls and completion.finish_reason == "stop":
        completion.finish_reason = "tool_calls"
    if completion.usage is None:
        completion.usage = Usage(
            estimate_tokens(messages_text(call.messages)),
            estimate_tokens(completion.text),
            estimated=True,
        )
    return completion
