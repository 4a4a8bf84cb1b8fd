"""Give a dead worker's unacknowledged tasks back to the queue, from every live worker.

kombu's Redis transport restores messages past their visibility timeout only from an
event-loop timer or, in the synchronous loop the gevent pool runs, on occasional idle
polls, which under steady traffic may not come. Each worker therefore sweeps on its own
schedule; kombu's mutex keeps concurrent sweeps from racing.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
from celery import Celery
from celery.signals import worker_ready

log = logging.getLogger(__name__)


def sweep(app: Celery, limit: int = 1000) -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.qos.restore_visible(num=limit)


def _sweep_forever(app: Celery, every_s: float) -> None:
    while True:
        gevent.sleep(every_s)
        try:
            sweep(app)
        except Exception:  # a broker hiccup must not end the sweeper
            log.warning("sweeping unacknowledged tasks failed", exc_info=True)


def install(app: Celery, visibility_timeout_s: int) -> None:
    every_s = max(1.0, visibility_timeout_s / 3)

    @worker_ready.connect(weak=False)
    def _start(sender: Any = None, **_: Any) -> None:
        gevent.spawn(_sweep_forever, app, every_s)
