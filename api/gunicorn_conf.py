"""gunicorn settings of the API (``--config python:api.gunicorn_conf``): its drain on SIGTERM.

Command-line flags still win, so the Procfile and ``deploy/`` give bind and process count.
On SIGTERM a worker process stops accepting at once, ends its resumable streams with a
reconnect notice (``api/drain.py``), closes its idle kept-alive connections and gives the
requests still in flight up to ``CHORUS_DRAIN_S`` (gunicorn's graceful timeout) before it
exits. The request hooks cost two dictionary operations a request, no I/O.
"""

from __future__ import annotations

import math
import signal
from typing import Any

import gevent

from api.drain import Drain
from shared.settings import get_settings

worker_class = "gevent"
worker_connections = 2000
keepalive = 75
# Escapes what callers sent before it reaches the log (see api/logs.py).
logger_class = "api.logs.GunicornLogger"
graceful_timeout = math.ceil(get_settings().drain_s)


def _drain(worker: Any) -> Drain | None:
    drain = getattr(worker.wsgi, "extensions", {}).get("chorus.drain")
    return drain if isinstance(drain, Drain) else None


def post_worker_init(worker: Any) -> None:
    """Start the application's drain with gunicorn's own handling of SIGTERM."""
    drain = _drain(worker)
    if drain is None:
        return

    def on_term() -> None:
        # In a greenlet of its own (gevent's handler), so the drain may switch and send.
        worker.alive = False  # gunicorn's handle_exit: the worker stops accepting
        drain.start()

    gevent.signal_handler(signal.SIGTERM, on_term)


def pre_request(worker: Any, _req: Any) -> None:
    drain = _drain(worker)
    if drain is not None:
        drain.request_started()


def post_request(worker: Any, _req: Any, environ: dict[str, Any], _resp: Any) -> None:
    drain = _drain(worker)
    if drain is not None:
        drain.request_ended(environ.get("gunicorn.socket"))
