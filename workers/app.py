"""The Celery application: broker, queues and the settings streaming work needs."""

from __future__ import annotations

import logging
from typing import Any

import gevent
from celery import Celery, signals

from shared import loglines, readiness
from shared.settings import Settings, get_settings
from workers import drain, requeue
from workers.broker import TRANSPORT
from workers.results import backend_url
from workers.runtime import get_runtime

QUEUES = ("interactive", "batch")
log = logging.getLogger(__name__)


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    readiness.install()
    app = Celery("chorus", include=["workers.tasks"])
    if settings.effective_broker_url.startswith(("redis://", "rediss://")):
        app.conf.broker_transport = TRANSPORT
    app.conf.update(
        broker_url=settings.effective_broker_url,
        # Only chords use the backend (for their join); chat results are the events.
        result_backend=backend_url(settings.redis_url),
        task_ignore_result=True,
        result_expires=3600,
        task_default_queue="interactive",
        task_create_missing_queues=True,
        # A task is acknowledged when it ends, so a killed worker's job is redelivered
        # once its lease lapses (workers/requeue.py); a live worker's job is protected
        # from a second delivery by its lease, and settlement is idempotent by job id.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # kombu's default pool of 10 starves hundreds of greenlets acking at once.
            "max_connections": settings.worker_concurrency + 50,
            "visibility_timeout": settings.broker_visibility_timeout_s,
        },
        result_backend_transport_options={"max_connections": settings.worker_concurrency + 50},
        # Under the gevent pool every greenlet is a "thread": without this each chord task
        # builds its own result backend, with a new Redis connection per task.
        result_backend_thread_safe=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        worker_send_task_events=False,
        # Probes expire with their interval so a stalled queue never piles them up.
        beat_schedule={
            "health-probe": {
                "task": "chorus.health_probe",
                "schedule": settings.health_interval_s,
                "options": {"queue": "interactive", "expires": settings.health_interval_s},
            },
            # On the interactive queue: a batch queue thousands deep would hold it back.
            "reconcile": {
                "task": "chorus.reconcile",
                "schedule": settings.reconcile_s,
                "options": {"queue": "interactive", "expires": settings.reconcile_s},
            },
        },
    )
    return app


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def escape_caller_text(logger: logging.Logger, **_: Any) -> None:
    """A worker's log lines escape what callers sent, as the API's do: provider errors
    and task failures can quote a request."""
    for handler in logger.handlers:
        loglines.guard(handler)


def reconcile_at_start(app: Celery) -> None:
    """A worker that starts (after a crash, say) reconciles at once rather than at the
    next beat: a pass, and another once the first's findings can be confirmed."""

    @signals.worker_ready.connect(weak=False)
    def _start(sender: Any = None, **_: Any) -> None:
        from workers.reconciler import CONFIRM_S, run_pass
        from workers.runtime import get_runtime

        def twice() -> None:
            for pause in (0.0, CONFIRM_S + 0.5):
                gevent.sleep(pause)
                try:
                    run_pass(get_runtime(), app)
                except Exception:  # the beat's passes carry on
                    log.warning("reconciling at the worker's start failed", exc_info=True)

        gevent.spawn(twice)


celery = make_celery()
requeue.install(celery, get_settings().broker_visibility_timeout_s)
drain.install(lambda: get_runtime().drain)
reconcile_at_start(celery)
