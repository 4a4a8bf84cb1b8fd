"""A replay list lost with Redis under a running job is made again with a retry first and
every call's text so far after it, by the publishing script on real Redis (the test's
own keys; "losing" them is what an empty restart does to them)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from api.relay import Watch, follow_batches
from api.replaylist import ListRead, closing, read_list
from shared import events
from workers.publisher import CoalescingPublisher, SyncPublisher


@pytest.fixture
def keys(redis_client: redis.Redis, job_id: str) -> Iterator[list[str]]:
    names = [events.events_key(job_id), events.epoch_key(job_id), events.relay_key(job_id)]
    yield names
    redis_client.delete(*names)


def lose(client: redis.Redis, keys: list[str]) -> None:
    client.delete(*keys)


def chunk(model: str, delta: str, length: int, **tags: Any) -> dict[str, Any]:
    return {"event": "chunk", "model": model, **tags, "delta": delta, "done": False,
            "latency_ms": float(length), "content_length": length}


def done(model: str, full: str, **tags: Any) -> dict[str, Any]:
    return {"event": "chunk", **tags, "delta": "", "done": True,
            "content_length": len(full), "model": model, "full_content": full}


def stored(client: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(r) for r in client.lrange(events.events_key(job_id), 0, -1)]


def base(client: redis.Redis, job_id: str) -> int:
    return events.epoch_base(client.get(events.epoch_key(job_id)))


def after_last_retry(evs: list[dict[str, Any]]) -> dict[str, str]:
    """What a client joins per model from its last retry on."""
    last = max((i for i, e in enumerate(evs) if e.get("event") == "retry"), default=-1)
    text: dict[str, str] = {}
    for e in evs[last + 1:]:
        if e.get("event") == "chunk" and "delta" in e:
            text[e["model"]] = text.get(e["model"], "") + e["delta"]
    return text


def test_a_new_job_numbers_from_one_and_writes_no_retry(
    redis_client: redis.Redis, job_id: str, keys: list[str]
) -> None:
    pub = SyncPublisher(redis_client, ttl_s=60, ttl_after_final_s=60)
    for i in range(3):
        pub.publish(job_id, chunk("a", "x", i + 1))
    assert base(redis_client, job_id) == 0
    assert [e["event"] for e in stored(redis_client, job_id)] == ["chunk"] * 3
    assert redis_client.pttl(events.epoch_key(job_id)) > 0
    read = read_list(redis_client, job_id, 1)
    assert [seq for seq, _ in read.items] == [2, 3] and read.base == 0


def test_a_lost_list_starts_again_with_a_retry_and_the_text_so_far(
    redis_client: redis.Redis, job_id: str, keys: list[str]
) -> None:
    pub = CoalescingPublisher(redis_client, ttl_s=60, ttl_after_final_s=60)
    text = {"a": "", "b": ""}
    for piece in ["Hel", "lo", " wor"]:
        for model in text:
            text[model] += piece
            pub.publish(job_id, chunk(model, piece, len(text[model]), role="candidate"))
    pub.publish(job_id, done("b", text["b"], role="candidate"))  # b ended before the loss
    pub.flush()
    old_len = redis_client.llen(events.events_key(job_id))
    sub = redis_client.pubsub()
    sub.subscribe(events.channel(job_id))
    sub.get_message(timeout=1)
    lose(redis_client, keys)
    before = int(time.time()) * events.EPOCH_SPAN
    text["a"] += "ld"
    pub.publish(job_id, chunk("a", "ld", len(text["a"]), role="candidate"))
    pub.flush()
    evs = stored(redis_client, job_id)
    new_base = base(redis_client, job_id)
    assert new_base >= before and new_base > old_len
    assert evs[0] == events.lost_event(new_base + 1)
    # After the retry: each call's whole text so far (b's end again), marked as said
    # again, then what is new.
    assert after_last_retry(evs) == text
    again = {"resent": True}
    assert evs[1:] == [
        {**chunk("a", "Hello wor", 9, role="candidate"), **again},
        {**chunk("b", "Hello wor", 9, role="candidate"), **again},
        {**done("b", "Hello wor", role="candidate"), **again},
        chunk("a", "ld", 11, role="candidate"),
    ]
    # Live messages carry the new ids too.
    seqs: list[int] = []
    while len(seqs) < 5 and (msg := sub.get_message(timeout=2)) is not None:
        seqs.append(events.split_message(msg["data"])[0])
    sub.close()
    assert seqs == [new_base + i for i in range(1, 6)]


def test_a_list_made_by_a_process_that_could_not_tell_gets_the_retry_once(
    redis_client: redis.Redis, job_id: str, keys: list[str]
) -> None:
    first = SyncPublisher(redis_client, ttl_s=60, ttl_after_final_s=60)
    other = SyncPublisher(redis_client, ttl_s=60, ttl_after_final_s=60)
    third = SyncPublisher(redis_client, ttl_s=60, ttl_after_final_s=60)
    first.publish(job_id, chunk("a", "one", 3))
    third.publish(job_id, chunk("c", "uno", 3))
    lose(redis_client, keys)
    # A call in a process that never wrote to the job: a new job's list, as far as it knows.
    other.publish(job_id, chunk("b", "two", 3))
    assert base(redis_client, job_id) == 0
    # The first process knew the old list: the list is made again in its place, with a
    # base of its own and the retry first.
    first.publish(job_id, chunk("a", " more", 8))
    new_base = base(redis_client, job_id)
    assert new_base > 0
    assert stored(redis_client, job_id)[0] == events.lost_event(new_base + 1)
    # The other process says its call's text again, as does the third, whose list was
    # lost; nobody writes a second retry.
    other.publish(job_id, chunk("b", " too", 7))
    third.publish(job_id, chunk("c", " dos", 7))
    evs = stored(redis_client, job_id)
    assert [e.get("reason") for e in evs if e["event"] == "retry"] == ["events lost"]
    assert after_last_retry(evs) == {"a": "one more", "b": "two too", "c": "uno dos"}
    assert base(redis_client, job_id) == new_base


def test_a_publisher_forgets_a_job_at_its_final(
    redis_client: redis.Redis, job_id: str, keys: list[str]
) -> None:
    pub = CoalescingPublisher(redis_client, ttl_s=60, ttl_after_final_s=60)
    pub.publish(job_id, chunk("a", "x", 1))
    pub.flush()
    assert len(pub._lists.logs) == 1
    pub.publish(job_id, events.final_event("done", job_id=job_id, status="succeeded"))
    pub.flush()
    assert len(pub._lists.logs) == 0


class QuietRelay:
    """Delivers nothing live: every event comes from the list."""

    @contextmanager
    def watch(self, job_id: str, own: bool = False) -> Iterator[Watch]:
        yield Watch()


def test_a_reader_of_the_lost_list_gets_the_new_one_from_its_start(
    redis_client: redis.Redis, job_id: str, keys: list[str]
) -> None:
    pub = SyncPublisher(redis_client, ttl_s=60, ttl_after_final_s=60)
    for i in range(5):
        pub.publish(job_id, chunk("a", "x", i + 1))
    lose(redis_client, keys)
    # The new list is longer than the position the reader had in the old one.
    for i in range(5, 9):
        pub.publish(job_id, chunk("a", "x", i + 1))
    final = events.final_event("done", job_id=job_id, status="succeeded")
    pub.publish(job_id, final)
    new_base = base(redis_client, job_id)
    got: list[tuple[int | None, str]] = []
    for batch in follow_batches(QuietRelay(), redis_client, job_id, 3):  # type: ignore[arg-type]
        assert batch is not None
        got += batch
    # The retry, the text so far, the three chunks after it and the final.
    assert [seq for seq, _ in got] == [new_base + i for i in range(1, 8)]
    evs = [json.loads(data) for _, data in got]
    assert evs[0]["event"] == "retry" and evs[1]["delta"] == "x" * 5
    assert after_last_retry(evs) == {"a": "x" * 9} and evs[-1]["final"]
    # Resuming inside the new list reads on from there; at its end, nothing more.
    read = read_list(redis_client, job_id, new_base + 5)
    assert [seq for seq, _ in read.items] == [new_base + 6, new_base + 7]
    assert closing(read_list(redis_client, job_id, new_base + 7), new_base + 7) == []
    assert closing(ListRead([], 7, events.encode(final), new_base), new_base + 9) == [
        (new_base + 7, events.encode(final))]


class Counting:
    """The real client, counting the commands a read sends."""

    def __init__(self, real: redis.Redis) -> None:
        self.real = real
        self.sent: list[str] = []

    def lrange(self, *args: Any) -> Any:
        self.sent.append("LRANGE")
        return self.real.lrange(*args)

    def evalsha(self, *args: Any) -> Any:
        self.sent.append("EVALSHA")
        return self.real.evalsha(*args)

    def eval(self, *args: Any) -> Any:
        self.sent.append("EVAL")
        return self.real.eval(*args)


def test_a_reader_that_finds_its_last_event_in_place_reads_one_lrange(
    redis_client: redis.Redis, job_id: str, keys: list[str]
) -> None:
    pub = SyncPublisher(redis_client, ttl_s=60, ttl_after_final_s=60)
    for i in range(5):
        pub.publish(job_id, chunk("a", "x", i + 1))
    raw = redis_client.lindex(events.events_key(job_id), 2)
    assert isinstance(raw, bytes)
    third = raw.decode()
    client = Counting(redis_client)
    read = read_list(client, job_id, 3, 0, third)  # type: ignore[arg-type]
    assert client.sent == ["LRANGE"] and [s for s, _ in read.items] == [4, 5]
    assert read.length == 5 and read.base == 0
    # Not where the reader left it: the list is not the one it read; the script decides.
    lose(redis_client, keys)
    for i in range(5):
        pub.publish(job_id, chunk("a", "y", i + 1))
    client.sent.clear()
    read = read_list(client, job_id, 3, 0, third)  # type: ignore[arg-type]
    assert client.sent[0] == "LRANGE" and client.sent[1].startswith("EVAL")
    assert read.base > 0 and read.items[0][0] == read.base + 1
    assert json.loads(read.items[0][1])["reason"] == "events lost"


def test_a_following_reader_finds_the_list_made_again_under_it(
    redis_client: redis.Redis, job_id: str, keys: list[str]
) -> None:
    pub = SyncPublisher(redis_client, ttl_s=60, ttl_after_final_s=60)
    for i in range(3):
        pub.publish(job_id, chunk("a", "x", i + 1))
    stream = follow_batches(QuietRelay(), redis_client, job_id, 0,  # type: ignore[arg-type]
                            poll_s=0.01)
    first = next(stream)
    assert first is not None and [s for s, _ in first] == [1, 2, 3]
    lose(redis_client, keys)
    for i in range(3, 8):  # longer than what the reader read
        pub.publish(job_id, chunk("a", "x", i + 1))
    pub.publish(job_id, events.final_event("done", job_id=job_id, status="succeeded"))
    rest: list[tuple[int | None, str]] = []
    for batch in stream:
        assert batch is not None
        rest += batch
    new_base = base(redis_client, job_id)
    assert [s for s, _ in rest] == [new_base + i for i in range(1, len(rest) + 1)]
    evs = [json.loads(d) for _, d in rest]
    assert evs[0]["reason"] == "events lost" and evs[-1]["final"]
    assert after_last_retry(evs) == {"a": "x" * 8}
