"""A busy process reads a stream at most once per pace, from its first token on; a
quiet one reads every token as it comes, and a pooled connection starts each response
unpaced. Against a real HTTP server on loopback sending one token per write."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import pytest

from workers.providers.read_pacing import PacedStream, PacedTransport, Pacer

TOKENS = 20
GAP_S = 0.01
FIRST_TOKEN_S = 0.1


class _Tokens(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        time.sleep(FIRST_TOKEN_S)
        for i in range(TOKENS):
            data = f"data: {i}\n\n".encode()
            self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            time.sleep(GAP_S)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tokens)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class _Counting(httpcore.NetworkBackend):
    """httpcore's sync backend, counting the reads that return bytes."""

    def __init__(self) -> None:
        self.reads = 0
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(*args, **kwargs)
        backend = self

        class Counted(httpcore.NetworkStream):
            def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
                data = stream.read(max_bytes, timeout)
                backend.reads += bool(data)
                return data

            def write(self, buffer: bytes, timeout: float | None = None) -> None:
                stream.write(buffer, timeout)

            def close(self) -> None:
                stream.close()

            def get_extra_info(self, info: str) -> Any:
                return stream.get_extra_info(info)

        return Counted()


def _stream(client: httpx.Client, url: str, pacer: Pacer) -> tuple[int, float, PacedStream]:
    """Tokens received, seconds to the first one, and the connection it came over."""
    start = time.monotonic()
    first = 0.0
    tokens = 0
    with client.stream("GET", url) as resp, pacer.streaming(resp) as pace:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                first = first or time.monotonic() - start
                tokens += 1
                pace.token_seen()
        stream = resp.extensions["network_stream"]
    assert isinstance(stream, PacedStream)
    return tokens, first, stream


def _client(backend: _Counting) -> httpx.Client:
    return httpx.Client(transport=PacedTransport(httpx.Limits(max_connections=4), backend))


def test_a_busy_process_reads_a_stream_once_per_pace_but_its_first_token_at_once(
    url: str,
) -> None:
    backend = _Counting()
    with _client(backend) as client:
        tokens, first, stream = _stream(client, url, Pacer(pace_s=0.06, from_streams=1))
    assert tokens == TOKENS
    # 20 tokens over ~200 ms, read every 60 ms: a handful of reads, headers included.
    assert backend.reads <= 8, backend.reads
    assert first < FIRST_TOKEN_S + 0.05
    assert stream.pace_s == 0.0  # back in the pool, unpaced


def test_a_quiet_process_reads_every_token_as_it_comes(url: str) -> None:
    backend = _Counting()
    with _client(backend) as client:
        tokens = _stream(client, url, Pacer(pace_s=0.06, from_streams=2))[0]
    assert tokens == TOKENS
    assert backend.reads >= TOKENS // 2, backend.reads


def test_a_reused_connection_reads_its_next_response_headers_at_once(url: str) -> None:
    backend = _Counting()
    pacer = Pacer(pace_s=0.5, from_streams=1)
    with _client(backend) as client:
        _stream(client, url, pacer)
        tokens, first = _stream(client, url, pacer)[:2]
    assert tokens == TOKENS
    # Paced by half a second, a pace carried over would hold the headers and first token.
    assert first < FIRST_TOKEN_S + 0.25
    assert pacer.open == 0
