"""The handlers Celery sets up for a worker's root and task loggers escape what callers
sent, as the API's do."""

from __future__ import annotations

import io
import logging
import uuid

import pytest
from celery import signals

import workers.app  # noqa: F401  (connects the logging receivers)
from shared.loglines import EscapeCallerText


@pytest.mark.parametrize("signal", [signals.after_setup_logger,
                                    signals.after_setup_task_logger])
def test_celerys_handlers_are_guarded(signal: signals.Signal) -> None:
    logger = logging.getLogger(f"chorus-test-{uuid.uuid4().hex}")
    logger.propagate = False
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    signal.send(sender=None, logger=logger, loglevel=logging.INFO, logfile=None,
                format="%(message)s", colorize=False)
    assert [type(f) for f in handler.filters] == [EscapeCallerText]
    logger.warning("provider said: %s", "no such tool 'x'\n[CRITICAL] forged")
    assert handler.stream.getvalue() == "provider said: no such tool 'x'\\n[CRITICAL] forged\n"
