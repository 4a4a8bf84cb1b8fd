"""One Redis subscription per API process, shared by every open stream of that process.

Each stream registers a queue for its job; the reader greenlet hands each pub/sub message
to the queues of that job. The process has a relay channel of its own: the events of a
job it took are published there too, so its streams of that job subscribe to nothing.
Another process's job is followed on the job's channel, subscribed (and confirmed) for
the stream. Sequence gaps (pub/sub drops messages by design) are filled from the replay
list.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import gevent
import redis
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Empty, Queue

from api.replaylist import Delivered, Item, ListRead, closing, read_list
from shared import events

log = logging.getLogger(__name__)



class Watch:
    """The live messages of one job for one stream."""

    def __init__(self) -> None:
        self.queue: Queue[Item] = Queue()

    def drain(self) -> list[Item]:
        items: list[Item] = []
        while True:
            try:
                items.append(self.queue.get_nowait())
            except Empty:
                return items

    def get(self, timeout: float) -> Item | None:
        try:
            return self.queue.get(timeout=timeout)
        except Empty:
            return None


class Relay:
    READ_TIMEOUT_S = 1.0

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pubsub = client.pubsub(ignore_subscribe_messages=False)
        self._watches: dict[str, set[Watch]] = {}
        # Streams per job that follow it on its own channel (a job another process took).
        self._subscribers: dict[str, int] = {}
        self._confirm: dict[str, list[Event]] = {}
        self.channel = f"chorus:relay:{uuid.uuid4().hex}"
        self._ready = Event()
        # Holds a refcount change and its (UN)SUBSCRIBE together so they reach Redis in order.
        self._lock = Semaphore()
        self._started = False
        self._last_read = time.monotonic()

    def _start(self) -> None:
        if self._started:
            return
        with self._lock:
            self._confirm[self.channel] = [self._ready]
            try:
                self._pubsub.subscribe(self.channel)
            except redis.RedisError:
                # Redis is down: the next stream starts the relay again.
                self._confirm.pop(self.channel, None)
                raise
        self._started = True
        gevent.spawn(self._read_forever)

    def _read_forever(self) -> None:
        # Nothing may end this loop: without it every stream of the process would fall
        # back to polling the replay lists.
        while True:
            try:
                self._read_once()
            except Exception as exc:  # logged, and the loop goes on
                log.warning("relay read failed, reconnecting: %r", exc)
                gevent.sleep(0.2)
                self._reconnect()

    def _read_once(self) -> None:
        conn = self._pubsub.connection
        if conn is not None and not conn.is_connected:
            self._reconnect()
        # Bounded: a read that waits forever would also wait out a readiness
        # notification the event loop never delivers (seen under load: the socket
        # readable, the reader asleep); a timed wait retries the read.
        msg = self._pubsub.get_message(timeout=self.READ_TIMEOUT_S)
        if msg is not None:
            self._dispatch(msg)
        elif self._confirm and time.monotonic() - self._last_read > self.READ_TIMEOUT_S:
            # Subscriptions wait for confirmation yet nothing was read for a while:
            # start over on a new connection, which subscribes to every channel again.
            log.warning("relay connection silent with %d subscriptions unconfirmed; "
                        "reconnecting", len(self._confirm))
            self._reconnect()

    def _reconnect(self) -> None:
        """A new connection, made here under the lock that (un)subscribing takes: the
        connection's handshake reads replies, which must not race another greenlet."""
        self._last_read = time.monotonic()
        conn = self._pubsub.connection
        if conn is None:
            return
        with self._lock:
            conn.disconnect()
            # Connecting subscribes to every channel again (redis-py's connect callback).
            with suppress(redis.RedisError):
                conn.connect()

    def _dispatch(self, msg: dict[str, object]) -> None:
        self._last_read = time.monotonic()
        kind = msg["type"]
        ch = msg["channel"]
        name = ch.decode() if isinstance(ch, bytes) else str(ch)
        if kind == "message":
            data: bytes = msg["data"]  # type: ignore[assignment]
            if name == self.channel:
                job_id, item = events.relay_message(data)
            else:
                job_id, item = name.removeprefix("chorus:ev:"), events.split_message(data)
            for w in self._watches.get(job_id, ()):
                w.queue.put(item)
        elif kind == "subscribe":
            for ev in self._confirm.pop(name, []):
                ev.set()

    @contextmanager
    def watch(self, job_id: str, own: bool = False,
              confirm_timeout: float = 5.0) -> Iterator[Watch]:
        """Receive a job's live events for the duration of the block: on this process's
        relay channel when it took the job (``own``), else on the job's channel,
        subscribed and confirmed first."""
        self._start()
        w = Watch()
        ch = events.channel(job_id)
        confirmed: Event | None = self._ready
        try:
            with self._lock:
                self._watches.setdefault(job_id, set()).add(w)
                if not own:
                    self._subscribers[job_id] = self._subscribers.get(job_id, 0) + 1
                    if self._subscribers[job_id] == 1:
                        confirmed = Event()
                        self._confirm.setdefault(ch, []).append(confirmed)
                        # May fail (Redis down): the block below undoes the registration.
                        self._pubsub.subscribe(ch)
            # Not confirmed in time only delays delivery: the replay list still has everything.
            if confirmed is not None:
                confirmed.wait(confirm_timeout)
            yield w
        finally:
            with self._lock:
                if confirmed is not None and confirmed is not self._ready \
                        and not confirmed.is_set():
                    # Never confirmed: stop waiting for it (or the reader would keep
                    # reconnecting for a channel nobody watches).
                    waiting = self._confirm.get(ch, [])
                    if confirmed in waiting:
                        waiting.remove(confirmed)
                    if not waiting:
                        self._confirm.pop(ch, None)
                watches = self._watches.get(job_id, set())
                watches.discard(w)
                if not watches:
                    self._watches.pop(job_id, None)
                if not own:
                    self._subscribers[job_id] -= 1
                    if not self._subscribers[job_id]:
                        del self._subscribers[job_id]
                        with suppress(redis.RedisError):
                            self._pubsub.unsubscribe(ch)


class ClientGone(Exception):
    """The client of a stream hung up while the stream had nothing to write."""


# Asked, while a job's list is missing or silent, whether the job ended: its final event
# (rebuilt from the database) if so, else None.
Ended = Callable[[], str | None]


def follow_batches(
    relay: Relay,
    client: redis.Redis,
    job_id: str,
    after: int = 0,
    poll_s: float = 1.0,
    keepalive_s: float = 15.0,
    own: bool = False,
    gone: Callable[[], bool] | None = None,
    ended: Ended | None = None,
) -> Iterator[list[Delivered] | None]:
    """Every event of the job after ``after``, exactly once and in order, until the final
    one, in batches of whatever is ready at once (so a busy stream is written with fewer
    syscalls). Yields ``None`` as a keepalive tick after ``keepalive_s`` of silence.
    ``own``: this process took the job (see ``Relay.watch``). ``gone``, asked after each
    ``poll_s`` of silence, tells whether the client hung up: then ``ClientGone``, since
    a hang-up is otherwise seen only at the next write.

    A reader at or past the final event ends at once (see ``closing``). ``ended`` is
    asked at once when the job has no list, and again after each ``keepalive_s`` of a
    missing or silent list: an ended job whose events are gone (expired, or lost with
    Redis) ends the stream with its final event from there, which has no sequence number.
    Redis errors propagate: the caller tells its client to resume, never that the job
    ended.
    """
    last = after
    # The base of the list read, and the last event delivered (see ``read_list``).
    base: int | None = None
    seen: str | None = None
    quiet = 0.0
    since_asked = keepalive_s  # the first question is asked at once
    with relay.watch(job_id, own) as w:

        def fresh(found: ListRead) -> list[Item]:
            # A list with a base above the reader's id was made again after Redis lost
            # the one the reader was in: the reader goes on from its start (its first
            # event, a retry, tells the client to drop what it had).
            nonlocal last, base, seen
            if found.base > last:
                last, seen = found.base, None
            base = found.base
            return found.items

        def read() -> ListRead:
            return read_list(client, job_id, last, base, seen)

        first = read()
        polled: ListRead | None = first
        pending = fresh(first)
        while True:
            batch: list[Delivered] = []
            final = False
            for seq, data in pending:
                if seq != last + 1:
                    continue
                last, seen = seq, data
                batch.append((seq, data))
                if events.is_final(data):
                    final = True
                    break
            pending = []
            if not final:
                # Take what else is already queued before writing.
                for seq, data in w.drain():
                    if seq <= last:
                        continue
                    if seq != last + 1:
                        pending = fresh(read())
                        break
                    last, seen = seq, data
                    batch.append((seq, data))
                    if events.is_final(data):
                        final = True
                        break
            if batch:
                quiet = since_asked = 0.0
                yield batch
            if final:
                return
            if polled is not None and not batch:
                # A fresh read of the list had nothing for this reader: did the job end?
                end = closing(polled, last)
                if end is None and ended is not None and since_asked >= keepalive_s:
                    since_asked = 0.0
                    rebuilt = ended()
                    end = None if rebuilt is None else [(None, rebuilt)]
                if end is not None:
                    if end:
                        yield end
                    return
            polled = None
            if pending:
                continue
            item = w.get(timeout=poll_s)
            if item is None:
                if gone is not None and gone():
                    raise ClientGone(job_id)
                # Silence: check the list in case pub/sub lost the message.
                now = polled = read()
                pending = fresh(now)
                since_asked += poll_s
                quiet = 0.0 if pending else quiet + poll_s
                if quiet >= keepalive_s:
                    quiet = 0.0
                    yield None
                continue
            seq, data = item
            if seq <= last:
                continue
            pending = [item] if seq == last + 1 else fresh(read())


def follow(
    relay: Relay,
    client: redis.Redis,
    job_id: str,
    after: int = 0,
    poll_s: float = 1.0,
    keepalive_s: float = 15.0,
    own: bool = False,
    ended: Ended | None = None,
) -> Iterator[Delivered | None]:
    """``follow_batches`` one event at a time."""
    for batch in follow_batches(relay, client, job_id, after, poll_s, keepalive_s, own,
                                ended=ended):
        if batch is None:
            yield None
        else:
            yield from batch
