"""A worker's drain on SIGTERM: its running jobs get the drain time to end, then go back.

Celery's warm shutdown stops taking messages at once and waits for the running tasks,
for ever. At the drain deadline each task still running is interrupted inside its own
greenlet; its lease is released on the way out (``workers/lease.py``), the events it
published are flushed, and its message is rejected back onto the head of its queue, so
another worker takes the job over at once (with a ``retry`` event, as after a crash)
instead of after the broker's visibility timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
from celery.exceptions import Reject
from celery.signals import worker_shutting_down
from gevent.event import Event

log = logging.getLogger(__name__)


class HandBack(BaseException):
    """Raised inside a task at the drain deadline. A BaseException, like GreenletExit:
    a job's own ``except Exception`` must not turn it into a failed, settled job."""


class Drain:
    """The tasks running in one worker process, and their deadline once it stops."""

    def __init__(self, drain_s: float) -> None:
        self.drain_s = drain_s
        self._running: dict[gevent.Greenlet, str] = {}
        self._idle = Event()
        self._idle.set()
        self.deadline: float | None = None

    @property
    def draining(self) -> bool:
        return self.deadline is not None

    @contextmanager
    def running(self, name: str, flush: Callable[[], None]) -> Iterator[None]:
        """Run a task's body as one that may be handed back at the drain deadline:
        ``flush`` writes its pending events before its message goes back to the queue
        (none of them may land after the next worker's ``retry``)."""
        if self.deadline is not None:
            # Delivered after SIGTERM (a fetch already under way when it came, or a
            # retry's countdown that ran out): straight back, for a worker that stays.
            raise Reject("worker draining", requeue=True)
        me = gevent.getcurrent()
        self._running[me] = name
        self._idle.clear()
        try:
            yield
        except HandBack:
            try:
                flush()
            except Exception:
                log.warning("could not flush the events of %s before handing it back", name,
                            exc_info=True)
            log.warning("drain deadline: %s handed back to the queue", name)
            raise Reject("worker draining", requeue=True) from None
        finally:
            self._running.pop(me, None)
            if not self._running:
                self._idle.set()

    def start(self) -> None:
        """SIGTERM arrived: hand back what is still running at the deadline."""
        if self.deadline is not None:
            return
        self.deadline = time.monotonic() + self.drain_s
        gevent.spawn(self._hand_back_at_deadline)

    def _hand_back_at_deadline(self) -> None:
        if self._idle.wait(self.drain_s):
            return
        left = list(self._running)
        log.warning("drain deadline after %.0f s: handing back %d running tasks",
                    self.drain_s, len(left))
        for greenlet in left:
            greenlet.kill(HandBack, block=False)


def install(drain: Callable[[], Drain]) -> None:
    """Start the process's drain when Celery begins its warm shutdown (SIGTERM)."""

    @worker_shutting_down.connect(weak=False)
    def _stopping(sender: Any = None, how: str = "", **_: Any) -> None:
        # Sent from the signal handler: spawn only, nothing that blocks.
        if how == "Warm":
            drain().start()
