"""gunicorn settings of the API (``--config python:api.gunicorn_conf``): its drain on SIGTERM.

Command-line flags still win, so the Procfile and ``deploy/`` give bind and process count.
On SIGTERM a worker process stops accepting at once, ends its resumable streams with a
reconnect notice (``api/drain.py``) and gives the requests still in flight up to
``CHORUS_DRAIN_S`` (gunicorn's graceful timeout) before it exits.
"""

from __future__ import annotations

import math
import signal
from typing import Any

import gevent

from shared.settings import get_settings

worker_class = "gevent"
worker_connections = 2000
keepalive = 75
# Escapes what callers sent before it reaches the log (see api/logs.py).
logger_class = "api.logs.GunicornLogger"
graceful_timeout = math.ceil(get_settings().drain_s)


def post_worker_init(worker: Any) -> None:
    """Start the application's drain with gunicorn's own handling of SIGTERM."""
    extensions = getattr(worker.wsgi, "extensions", {})
    drain = extensions.get("chorus.drain")
    if drain is None:
        return

    def on_term() -> None:
        # In a greenlet of its own (gevent's handler), so the drain may switch and send.
        worker.alive = False  # gunicorn's handle_exit: the worker stops accepting
        drain.start()

    gevent.signal_handler(signal.SIGTERM, on_term)
