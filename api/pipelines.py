"""Cancelling a compare/blend/judge job also revokes its queued pipeline tasks."""

from __future__ import annotations

import logging

import redis
from celery import Celery
from flask import current_app
from kombu.exceptions import KombuError

from workers.pipeline import revoke_canvas

log = logging.getLogger(__name__)


def on_cancel(job_id: str) -> None:
    """The ``chorus.on_cancel`` hook. The cancel flag is already up (running calls stop at
    it), so a failed revoke only costs queued calls starting and stopping at once."""
    app: Celery = current_app.extensions["celery"]
    client: redis.Redis = current_app.extensions["chorus.redis"]
    try:
        revoke_canvas(app, client, job_id)
    except (KombuError, OSError, redis.RedisError):
        log.warning("could not revoke the pipeline tasks of job %s", job_id, exc_info=True)
