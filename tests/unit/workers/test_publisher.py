"""The coalescing publisher keeps per-job order and loses nothing while batching."""

from __future__ import annotations

import json

import gevent
import redis

from shared import events
from workers.publisher import CoalescingPublisher


def test_interleaved_jobs_keep_their_order(redis_client: redis.Redis, job_id: str) -> None:
    other = job_id + "-b"
    pub = CoalescingPublisher(redis_client, ttl_s=60, ttl_after_final_s=5)
    for i in range(200):
        pub.publish(job_id, {"event": "chunk", "i": i})
        pub.publish(other, {"event": "chunk", "i": i})
    pub.publish(job_id, events.final_event("done", status="succeeded"))
    pub.flush()
    try:
        mine = [json.loads(r) for r in redis_client.lrange(events.events_key(job_id), 0, -1)]
        theirs = [json.loads(r) for r in redis_client.lrange(events.events_key(other), 0, -1)]
        assert [e["i"] for e in mine[:-1]] == list(range(200))
        assert mine[-1]["final"] is True
        assert [e["i"] for e in theirs] == list(range(200))
        # The job that ended gets the short after-final expiry.
        assert redis_client.pttl(events.events_key(job_id)) <= 5000
        assert redis_client.pttl(events.events_key(other)) > 5000
    finally:
        redis_client.delete(events.events_key(other))


def chunk(delta: str, n: int, **tags: object) -> dict[str, object]:
    return {"event": "chunk", "model": "m", **tags, "delta": delta, "done": False,
            "latency_ms": float(n), "content_length": n}


def test_text_chunks_queued_behind_a_write_go_out_joined(
    redis_client: redis.Redis, job_id: str
) -> None:
    pub = CoalescingPublisher(redis_client, ttl_s=60, ttl_after_final_s=5)
    pub.publish(job_id, chunk("a", 1))  # written at once: nothing in flight
    # As while a write is in flight: what follows queues.
    pub._busy = True
    pub.publish(job_id, chunk("b", 2))
    pub.publish(job_id, chunk("c", 3))
    pub.publish(job_id, chunk("d", 4, role="judge"))  # another call's tags: not joined
    pub.publish(job_id, {"event": "chunk", "model": "m", "delta": "", "done": True})
    pub.publish(job_id, chunk("e", 5))
    pub.publish(job_id, events.final_event("done", status="succeeded"))
    pub._busy = False
    pub.publish(job_id, chunk("f", 6))  # drains the queue, in order
    pub.flush()
    stored = [json.loads(r) for r in redis_client.lrange(events.events_key(job_id), 0, -1)]
    assert [(e.get("delta"), e.get("content_length")) for e in stored] == [
        ("a", 1), ("bc", 3), ("d", 4), ("", None), ("e", 5), (None, None), ("f", 6)]
    assert stored[1]["latency_ms"] == 3.0 and stored[5]["final"] is True


class LosesFirstReply:
    """A Redis client whose first pipeline fails: after reaching Redis (the reply is lost
    with the connection) or before it."""

    def __init__(self, real: redis.Redis, reached: bool) -> None:
        self.real, self.reached, self.failed = real, reached, False

    def script_load(self, script: str) -> str:
        return str(self.real.script_load(script))

    def pipeline(self, transaction: bool = False) -> redis.client.Pipeline:
        pipe = self.real.pipeline(transaction=transaction)
        if self.failed:
            return pipe
        self.failed = True
        execute = pipe.execute

        def broken(raise_on_error: bool = True) -> list[object]:
            if self.reached:
                execute()
            raise redis.ConnectionError("connection lost")

        pipe.execute = broken  # type: ignore[method-assign]
        return pipe


def test_a_write_retried_after_its_reply_was_lost_appends_each_event_once(
        redis_client: redis.Redis, job_id: str) -> None:
    for reached in (True, False):
        redis_client.delete(events.events_key(job_id))
        client = LosesFirstReply(redis_client, reached)
        pub = CoalescingPublisher(client, ttl_s=60, ttl_after_final_s=5)  # type: ignore[arg-type]
        pub.publish(job_id, chunk("a", 1))
        pub.publish(job_id, chunk("b", 2))
        pub.flush()
        stored = [json.loads(r)["delta"]
                  for r in redis_client.lrange(events.events_key(job_id), 0, -1)]
        assert client.failed
        assert stored == ["a", "b"], f"reached={reached}"


class CountsWrites:
    """A Redis client that counts the pipelines it executes."""

    def __init__(self, real: redis.Redis) -> None:
        self.real, self.writes = real, 0

    def script_load(self, script: str) -> str:
        return str(self.real.script_load(script))

    def pipeline(self, transaction: bool = False) -> redis.client.Pipeline:
        pipe = self.real.pipeline(transaction=transaction)
        execute = pipe.execute

        def counted(raise_on_error: bool = True) -> list[object]:
            self.writes += 1
            return execute()

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


def test_events_within_the_linger_go_out_in_one_write(
        redis_client: redis.Redis, job_id: str) -> None:
    client = CountsWrites(redis_client)
    pub = CoalescingPublisher(client, ttl_s=60, ttl_after_final_s=5,  # type: ignore[arg-type]
                              linger_s=0.05)
    pub.publish(job_id, chunk("a", 1))
    # After a quiet spell the event is written before publish returns.
    assert client.writes == 1
    assert redis_client.llen(events.events_key(job_id)) == 1
    other = job_id + "-b"
    try:
        for i in range(20):
            pub.publish(job_id if i % 2 else other, {"event": "score", "i": i})
        assert client.writes == 1  # lingering: nothing written yet
        pub.flush()
        assert client.writes == 2
        mine = [json.loads(r) for r in redis_client.lrange(events.events_key(job_id), 1, -1)]
        theirs = [json.loads(r) for r in redis_client.lrange(events.events_key(other), 0, -1)]
        assert [e["i"] for e in mine] == list(range(1, 20, 2))
        assert [e["i"] for e in theirs] == list(range(0, 20, 2))
    finally:
        redis_client.delete(events.events_key(other))


def test_a_final_event_deletes_the_keys_it_names_in_its_write(
        redis_client: redis.Redis, job_id: str) -> None:
    ticket, lease = f"{job_id}:ticket", f"{job_id}:lease"
    redis_client.set(ticket, "t")
    redis_client.set(lease, "l")
    client = CountsWrites(redis_client)
    pub = CoalescingPublisher(client, ttl_s=60, ttl_after_final_s=5)  # type: ignore[arg-type]
    pub.publish(job_id, events.final_event("done", status="succeeded"), [ticket, lease])
    pub.flush()
    assert client.writes == 1
    assert redis_client.exists(ticket, lease) == 0
    assert json.loads(redis_client.lindex(events.events_key(job_id), -1))["final"] is True


def test_flush_writes_what_lingers_without_waiting_it_out(
        redis_client: redis.Redis, job_id: str) -> None:
    pub = CoalescingPublisher(redis_client, ttl_s=60, ttl_after_final_s=5, linger_s=600)
    pub.publish(job_id, chunk("a", 1))
    pub.publish(job_id, {"event": "score", "i": 1})  # due in ten minutes
    with gevent.Timeout(10):  # the step that flushes hands its stage on now
        pub.flush()
    assert redis_client.llen(events.events_key(job_id)) == 2
    pub.publish(job_id, {"event": "score", "i": 2})  # still within the linger
    with gevent.Timeout(10):
        pub.flush()
    assert redis_client.llen(events.events_key(job_id)) == 3
