"""Canvas results: sending subscribes to nothing, and waiting on a result still answers.

A real worker runs ``chorus.model_call`` for a job that does not exist, which returns a
``not_run`` record at once: enough to wait on, single and as a group. (Pipelines never
store that task's result; these sends ask for it.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery, group

from shared.settings import Settings
from tests.stack import Stack
from workers.app import make_celery
from workers.broker import Channel
from workers.results import ChordResults

STEP = {"key": "M:x", "model": "gpt-5.2", "role": "candidate", "prompt": "compare"}


@pytest.fixture
def app(stack: Stack) -> Iterator[Celery]:
    app = make_celery(Settings(redis_url=stack.redis_url, broker_url=stack.redis_url))
    yield app
    app.close()


def test_sending_a_group_subscribes_to_no_result(app: Celery) -> None:
    assert isinstance(app.backend, ChordResults)
    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, Channel)
    sigs = [app.signature("chorus.model_call", args=(f"no-job-{i}", STEP),
                          queue="interactive", ignore_result=False) for i in range(3)]
    res = group(sigs).apply_async()
    consumer = app.backend.result_consumer
    assert not consumer.subscribed_to
    records = res.get(timeout=20)
    assert [r["error"]["code"] for r in records] == ["not_run"] * 3


def test_a_single_result_is_awaited(app: Celery) -> None:
    res = app.send_task("chorus.model_call", args=("no-job", STEP), queue="interactive",
                         ignore_result=False)
    assert not app.backend.result_consumer.subscribed_to
    record = res.get(timeout=20)
    assert record["model"] == "gpt-5.2"
    assert record["error"]["code"] == "not_run"
