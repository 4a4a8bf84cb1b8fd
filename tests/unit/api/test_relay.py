"""``follow`` delivers every event once, in order, whatever pub/sub drops or repeats.

The live channel is replaced by a queue the test fills (pub/sub is what we fake around);
the replay list is real Redis, written by the real publisher script.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from api.relay import Watch, follow
from shared import events
from workers.publisher import SyncPublisher


class ScriptedRelay:
    def __init__(self, live: list[tuple[int, str]]) -> None:
        self.live = live

    @contextmanager
    def watch(self, job_id: str, own: bool = False) -> Iterator[Watch]:
        w = Watch()
        for item in self.live:
            w.queue.put(item)
        yield w


def publish_all(client: redis.Redis, job_id: str, n: int) -> list[str]:
    pub = SyncPublisher(client, ttl_s=60, ttl_after_final_s=60)
    for i in range(n - 1):
        pub.publish(job_id, {"event": "chunk", "delta": f"t{i}"})
    pub.publish(job_id, events.final_event("done", job_id=job_id, status="succeeded"))
    return [r.decode() for r in client.lrange(events.events_key(job_id), 0, -1)]


def run(relay: Any, client: redis.Redis, job_id: str, after: int = 0) -> list[int]:
    out = []
    for item in follow(relay, client, job_id, after, poll_s=0.01):
        assert item is not None
        out.append(item[0])
    return out


def test_gaps_in_live_messages_are_filled_from_the_list(
    redis_client: redis.Redis, job_id: str
) -> None:
    stored = publish_all(redis_client, job_id, 10)
    # Pub/sub lost 3..6 and delivered some twice.
    live = [(1, stored[0]), (2, stored[1]), (2, stored[1]), (7, stored[6]), (8, stored[7])]
    assert run(ScriptedRelay(live), redis_client, job_id) == list(range(1, 11))


def test_resume_after_last_event_id(redis_client: redis.Redis, job_id: str) -> None:
    publish_all(redis_client, job_id, 6)
    assert run(ScriptedRelay([]), redis_client, job_id, after=4) == [5, 6]


def test_nothing_live_at_all_still_completes(redis_client: redis.Redis, job_id: str) -> None:
    publish_all(redis_client, job_id, 5)
    assert run(ScriptedRelay([]), redis_client, job_id) == [1, 2, 3, 4, 5]


def test_publisher_numbers_events_and_sets_ttl(redis_client: redis.Redis, job_id: str) -> None:
    ps = redis_client.pubsub()
    ps.subscribe(events.channel(job_id))
    ps.get_message(timeout=1)
    publish_all(redis_client, job_id, 3)
    got = []
    for _ in range(3):
        msg = ps.get_message(timeout=1)
        assert msg is not None
        got.append(events.split_message(msg["data"]))
    assert [seq for seq, _ in got] == [1, 2, 3]
    assert events.is_final(got[-1][1])
    assert 0 < redis_client.ttl(events.events_key(job_id)) <= 60
    ps.close()
