"""A worker's drain on real greenlets: tasks that end within the drain time are left alone,
the ones still running at the deadline are handed back (flushed, then rejected back onto
the queue), and a task that starts after the deadline goes straight back."""

from __future__ import annotations

import time

import gevent
from celery.exceptions import Reject

from workers.drain import Drain


def task(drain: Drain, name: str, seconds: float, log: list[str]) -> str:
    try:
        with drain.running(name, lambda: log.append(f"flushed {name}")):
            gevent.sleep(seconds)
            log.append(f"ended {name}")
            return "ended"
    except Reject as exc:
        assert exc.requeue
        return "rejected"


def test_the_deadline_hands_back_what_is_still_running() -> None:
    drain = Drain(0.3)
    log: list[str] = []
    short = gevent.spawn(task, drain, "short", 0.1, log)
    long = gevent.spawn(task, drain, "long", 30, log)
    gevent.sleep(0)
    started = time.monotonic()
    drain.start()
    drain.start()  # a second signal changes nothing
    assert long.get(timeout=5) == "rejected"
    took = time.monotonic() - started
    assert short.get() == "ended"
    assert log == ["ended short", "flushed long"]
    assert 0.25 < took < 1.0, took


def test_a_task_delivered_after_the_signal_goes_straight_back() -> None:
    drain = Drain(0.1)
    log: list[str] = []
    drain.start()
    # Before the deadline too: a stopping worker starts nothing new.
    assert gevent.spawn(task, drain, "late", 0, log).get(timeout=5) == "rejected"
    gevent.sleep(0.2)
    assert gevent.spawn(task, drain, "later", 0, log).get(timeout=5) == "rejected"
    assert log == []


def test_a_failed_flush_still_hands_the_task_back() -> None:
    drain = Drain(0.05)

    def broken_flush() -> None:
        raise ConnectionError("redis went away")

    def body() -> Reject | None:
        try:
            with drain.running("job", broken_flush):
                gevent.sleep(30)
        except Reject as exc:
            return exc
        return None

    g = gevent.spawn(body)
    gevent.sleep(0)
    drain.start()
    rejected = g.get(timeout=5)
    assert isinstance(rejected, Reject) and rejected.requeue
