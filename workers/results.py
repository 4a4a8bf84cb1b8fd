"""The chord result backend: Redis, subscribing to a task's result only when it is awaited.

Celery's Redis backend subscribes the sending process to a task's result channel as soon
as it sends the task (in any process whose pool does not block joins, gevent's included)
and again when a group or chord registers its headers. For a canvas that is a round trip
per header, a background reader woken by every result, and more round trips to
unsubscribe. Chorus never waits on a canvas's results (its events are the answer, and
the chord's own join hands the body its header results), so here only
``AsyncResult.get`` subscribes, before it first reads the stored result.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend


class ChordResults(RedisBackend):
    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def _add_pending_result(self, task_id: str, result: Any, weak: bool = False) -> None:
        return None

    def _wait_for_pending(self, result: Any, **kwargs: Any) -> Any:
        # A group waits on its members; a single result on itself.
        for awaited in getattr(result, "results", None) or [result]:
            super()._add_pending_result(awaited.id, awaited)
        return super()._wait_for_pending(result, **kwargs)


def backend_url(redis_url: str) -> str:
    """The ``result_backend`` setting, in Celery's ``module:Class+url`` form."""
    return f"{__name__}:{ChordResults.__name__}+{redis_url}"
