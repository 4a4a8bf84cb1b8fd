"""A stream of a job its own process took follows it on the process's relay channel,
subscribing to nothing; a stream of another process's job subscribes to the job.

Run in a child process patched by gevent, as the API runs, against the real Redis and
the real publisher script. Polling the replay list is set to 30 s, so only live
messages can bring the events in time.
"""

from __future__ import annotations

import textwrap

from tests.child import DEFAULT_REDIS_URL, run_json

SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, os, sys, time, uuid
    import gevent, redis
    from api.relay import Relay, follow
    from shared import events
    from workers.publisher import CoalescingPublisher

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    relay = Relay(client)
    pub = CoalescingPublisher(client, ttl_s=60, ttl_after_final_s=60)
    own = sys.argv[1] == "own"
    job = f"unit-{uuid.uuid4()}"
    if own:
        client.set(events.relay_key(job), relay.channel, ex=60)
    got, subscribers = [], []

    def reader():
        for item in follow(relay, client, job, poll_s=30, own=own):
            got.append(item[0])

    g = gevent.spawn(reader)
    gevent.sleep(0.2)
    start = time.monotonic()
    for i in range(5):
        pub.publish(job, {"event": "chunk", "delta": str(i)})
        gevent.sleep(0.01)
        subscribers.append(client.pubsub_numsub(events.channel(job))[0][1])
    pub.publish(job, events.final_event("done", status="succeeded"), [events.relay_key(job)])
    g.join(timeout=5)
    print(json.dumps({"got": got, "subscribers": max(subscribers),
                      "fast": time.monotonic() - start < 5,
                      "relay_key_left": client.exists(events.relay_key(job))}))
    client.delete(events.events_key(job))
""")


def run(mode: str) -> dict[str, object]:
    return run_json(SCRIPT, mode, timeout=30, REDIS_URL=DEFAULT_REDIS_URL)


def test_a_job_the_process_took_arrives_on_its_relay_channel_without_a_subscription() -> None:
    result = run("own")
    assert result == {"got": [1, 2, 3, 4, 5, 6], "subscribers": 0, "fast": True,
                      "relay_key_left": 0}


def test_another_process_job_is_followed_on_its_own_channel() -> None:
    result = run("other")
    assert result == {"got": [1, 2, 3, 4, 5, 6], "subscribers": 1, "fast": True,
                      "relay_key_left": 0}
