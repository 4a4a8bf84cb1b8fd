"""Every reader ends: at or past an ended job's last event, with the database's final when
the replay list is gone, and never with a final of its own when Redis fails.

The live channel is a queue the test fills (pub/sub is what we fake around); the replay
list is real Redis, written by the real publisher script.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice

import pytest
import redis

from api.relay import ListRead, Watch, closing, follow_batches, read_list
from shared import events
from tests.procs import free_port
from workers.publisher import SyncPublisher

FINAL = events.encode(events.final_event("done", job_id="j", status="succeeded"))


class QuietRelay:
    """Delivers nothing live: every event comes from the list."""

    @contextmanager
    def watch(self, job_id: str, own: bool = False) -> Iterator[Watch]:
        yield Watch()


def publish(client: redis.Redis, job_id: str, chunks: int, final: bool = True) -> None:
    pub = SyncPublisher(client, ttl_s=60, ttl_after_final_s=60)
    for i in range(chunks):
        pub.publish(job_id, {"event": "chunk", "delta": f"t{i}"})
    if final:
        pub.publish(job_id, events.final_event("done", job_id=job_id, status="succeeded"))


def read_all(client: redis.Redis, job_id: str, after: int, **kw: object) -> list[object]:
    """The batches up to the stream's end, or up to its first keepalive (a stream that
    would wait)."""
    out: list[object] = []
    for batch in follow_batches(QuietRelay(), client, job_id, after, **kw):  # type: ignore[arg-type]
        out.append(batch)
        if batch is None:
            break
    return out


def test_closing_at_past_and_before_the_end() -> None:
    assert closing(ListRead([], 5, FINAL), 5) == []
    # Shorter than what the reader saw: Redis lost the list, the job numbered afresh.
    assert closing(ListRead([], 3, FINAL), 9) == [(3, FINAL)]
    assert closing(ListRead([], 5, '{"event":"chunk"}'), 5) is None  # still running
    assert closing(ListRead([], 0, None), 4) is None  # no list: the database decides
    assert closing(ListRead([(6, FINAL)], 6, FINAL), 5) is None  # something to read
    assert closing(ListRead([], 7, FINAL), 5) is None  # appended meanwhile: read again


def test_read_list_reports_length_and_tail(redis_client: redis.Redis, job_id: str) -> None:
    publish(redis_client, job_id, 3)
    stored = [r.decode() for r in redis_client.lrange(events.events_key(job_id), 0, -1)]
    for after in (0, 1, 2, 4):
        read = read_list(redis_client, job_id, after)
        assert read.items == [(i + 1, stored[i]) for i in range(after, 4)], after
        assert read.length == 4 and read.tail == stored[-1] and events.is_final(read.tail)
    assert read_list(redis_client, job_id, 9) == ListRead([], 4, stored[-1])  # past the end
    for after in (0, 3):
        assert read_list(redis_client, f"{job_id}-none", after) == ListRead([], 0, None)


@pytest.mark.parametrize("after", [4, 5])
def test_at_the_last_event_of_an_ended_job_ends_at_once(
    redis_client: redis.Redis, job_id: str, after: int
) -> None:
    publish(redis_client, job_id, 3)  # 4 events: the final is 4
    start = time.monotonic()
    got = read_all(redis_client, job_id, after, poll_s=1.0, keepalive_s=1.0)
    assert time.monotonic() - start < 0.9  # no wait for a poll
    # At the final: nothing more. Past it: the final again, as the list numbers it.
    assert got == ([] if after == 4 else [[(4, redis_client.lindex(
        events.events_key(job_id), -1).decode())]])


def test_missing_list_of_an_ended_job_ends_with_the_rebuilt_final(
    redis_client: redis.Redis, job_id: str
) -> None:
    asked: list[float] = []

    def ended() -> str:
        asked.append(time.monotonic())
        return FINAL

    start = time.monotonic()
    got = read_all(redis_client, job_id, 7, poll_s=1.0, keepalive_s=1.0, ended=ended)
    assert got == [[(None, FINAL)]]
    assert len(asked) == 1 and asked[0] - start < 0.9


def test_missing_list_of_a_running_job_is_followed_and_asked_about_sparingly(
    redis_client: redis.Redis, job_id: str
) -> None:
    asked: list[float] = []

    def ended() -> str | None:
        asked.append(time.monotonic())
        return None

    stream = follow_batches(QuietRelay(), redis_client, job_id, 0,  # type: ignore[arg-type]
                            poll_s=0.01, keepalive_s=0.1, ended=ended)
    ticks = list(islice(stream, 5))
    assert ticks == [None] * 5  # keepalives: the job may still come
    # Asked at once, then once per keepalive period, not at every poll.
    assert 4 <= len(asked) <= 7
    publish(redis_client, job_id, 2)
    rest = [b for b in stream if b is not None]
    assert [seq for batch in rest for seq, _ in batch] == [1, 2, 3]


def test_a_list_left_without_its_final_ends_from_the_database(
    redis_client: redis.Redis, job_id: str
) -> None:
    publish(redis_client, job_id, 3, final=False)
    answers = iter([None, FINAL])  # first: the row as the request read it (running)
    stream = follow_batches(QuietRelay(), redis_client, job_id, 0,  # type: ignore[arg-type]
                            poll_s=0.01, keepalive_s=0.05, ended=lambda: next(answers))
    # Without the question the stream would send keepalives for ever: take a bounded few.
    got = list(islice(stream, 10))
    seqs = [item[0] for batch in got if batch is not None for item in batch]
    assert seqs == [1, 2, 3, None]
    assert next(stream, "ended") == "ended"


def test_without_the_database_question_a_missing_list_is_only_followed(
    redis_client: redis.Redis, job_id: str
) -> None:
    stream = follow_batches(QuietRelay(), redis_client, job_id, 3,  # type: ignore[arg-type]
                            poll_s=0.01, keepalive_s=0.05)
    assert list(islice(stream, 3)) == [None] * 3


def test_redis_errors_propagate_instead_of_ending_the_stream() -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(redis.RedisError):
        read_all(dead, "job", 3, poll_s=0.01, ended=lambda: FINAL)
    assert time.monotonic() - start < 5
