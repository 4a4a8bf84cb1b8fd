"""Publish job events to Redis: append to the replay list and PUBLISH, in one script call.

Under load a worker produces many token events at once; the coalescing publisher sends
everything queued while the previous write was in flight, or within a short linger after
it, as one pipeline: an idle stream still goes out per token at once, busy ones batch
(every write is a loopback round trip, whose syscalls cost more CPU than the commands).
Text chunks of one call that queue up behind a write go out as one chunk (their deltas
joined), as a provider's own stream does when it falls behind: fewer events for Redis,
the relay and the client, and nothing lost.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import gevent
import redis
from gevent.event import Event

from shared import events
from workers.resync import JobLogs

log = logging.getLogger(__name__)

# KEYS[1] = replay list, KEYS[2] = the job's relay key, KEYS[3] = the list's epoch; ARGV =
# channel, ttl ms, job id, the epoch the caller last wrote to ('' if none) and its base,
# event json... Each event goes to the job's channel and, when the API process that took
# the job named one, to that process's relay channel (named as long as the list lives).
# Replies 0: appended to the caller's list; {0, epoch}: appended to a list the caller did
# not know; {1, epoch}: not appended, the list is not the one the caller wrote to (Redis
# lost it): the caller says again what its calls said, then sends the batch again.
#
# A caller that wrote to the job before, finding no list, makes it again: a new epoch with
# a base above the old ids (the server's clock in seconds times the span, or the old base
# plus the span), and the retry event first. A caller that never wrote to the job cannot
# tell a new job from a lost list: it makes a list of base 0 (a new job's); should that
# list be a lost one's successor, the first caller that knew the old list finds it and
# makes the list again in its place (whoever wrote to it says its part again at its next
# write). So a list whose base changes never keeps an event where another list had it,
# and the retry carries its own id: a reader that finds its last event where it left it
# is in the list it read. All in this one call; on the usual path it costs the list's
# epoch a GET and a PEXPIRE.
_LOST_OPEN, _LOST_CLOSE = events.encode(events.lost_event(0)).split('"first_id":0', 1)
_LOST_OPEN += '"first_id":'
_APPEND_PUBLISH = """
local known = ARGV[4]
local epoch = redis.call('GET', KEYS[3])
local relay = redis.call('GET', KEYS[2])
local base = tonumber(ARGV[5])
local reply = 0
if epoch ~= known then
  if known ~= '' and (epoch or redis.call('EXISTS', KEYS[1]) == 0) then
    if not epoch or string.sub(epoch, 1, 2) == '0:' then
      redis.call('DEL', KEYS[1])
      local now = redis.call('TIME')
      base = math.max(tonumber(now[1]) * SPAN, base + SPAN)
      epoch = string.format('%d', base) .. ':' .. now[1] .. now[2]
      redis.call('SET', KEYS[3], epoch)
      local lost = LOST_OPEN .. string.format('%d', base + 1) .. LOST_CLOSE
      redis.call('RPUSH', KEYS[1], lost)
      local msg = string.format('%d', base + 1) .. '\\n' .. lost
      redis.call('PUBLISH', ARGV[1], msg)
      if relay then
        redis.call('PUBLISH', relay, ARGV[3] .. '\\n' .. msg)
      end
    end
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
    return {1, epoch}
  end
  if not epoch then
    local now = redis.call('TIME')
    epoch = '0:' .. now[1] .. now[2]
    redis.call('SET', KEYS[3], epoch)
  end
  base = tonumber(string.match(epoch, '^%d+'))
  reply = {0, epoch}
end
local n = #ARGV - 5
local first = base + redis.call('RPUSH', KEYS[1], unpack(ARGV, 6)) - n
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
if relay then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
for i = 1, n do
  local seq = first + i
  if base > 0 then
    seq = string.format('%d', seq)
  end
  local msg = seq .. '\\n' .. ARGV[i + 5]
  redis.call('PUBLISH', ARGV[1], msg)
  if relay then
    redis.call('PUBLISH', relay, ARGV[3] .. '\\n' .. msg)
  end
end
return reply
""".replace("SPAN", str(events.EPOCH_SPAN)).replace(
    "LOST_OPEN", f"[==[{_LOST_OPEN}]==]").replace("LOST_CLOSE", f"[==[{_LOST_CLOSE}]==]")
# For a retry after a failed write, which may have reached Redis before the connection
# broke: a job's batch is appended only if its last event is not in the list already
# (a script runs whole or not at all; events carry their timing, so no two are alike).
_APPEND_PUBLISH_ONCE = """
if redis.call('LPOS', KEYS[1], ARGV[#ARGV], 'RANK', -1, 'MAXLEN', 10000) then
  return {0, redis.call('GET', KEYS[3]) or ARGV[4]}
end
""" + _APPEND_PUBLISH


# Fields a later text chunk of the same call carries forward when two are joined.
_JOINED = ("delta", "latency_ms", "content_length")


def _joinable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two text chunks of the same call (same model, role, layer, ...), tool calls apart."""
    if not (a.get("event") == b.get("event") == "chunk"
            and a.get("done") is False and b.get("done") is False
            and "tool_calls" not in a and "tool_calls" not in b and len(a) == len(b)):
        return False
    return all(k in _JOINED or (k in b and b[k] == v) for k, v in a.items())


def _joined(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {**a, "delta": a["delta"] + b["delta"], "latency_ms": b.get("latency_ms"),
            "content_length": b.get("content_length")}


class EventSink(Protocol):
    def publish(self, job_id: str, event: dict[str, Any], drop: Sequence[str] = ()) -> None:
        """Queue ``event``; ``drop`` names keys deleted once it is written (with a final
        event: what the job kept in Redis while it ran)."""

    def flush(self) -> None: ...


class _Lists:
    """A publisher's side of the jobs' replay lists: the script's arguments, and what its
    replies mean (see ``_APPEND_PUBLISH``)."""

    def __init__(self, ttl_s: int) -> None:
        self.logs = JobLogs(idle_s=ttl_s)

    def args(self, job_id: str, ttl_ms: int, items: Sequence[dict[str, Any]]) -> list[Any]:
        """``EVALSHA``'s arguments after the sha."""
        epoch, base = self.logs.epoch(job_id)
        return [3, events.events_key(job_id), events.relay_key(job_id),
                events.epoch_key(job_id), events.channel(job_id), ttl_ms, job_id, epoch,
                base, *map(events.encode, items)]

    def settle(self, batch: Mapping[str, list[dict[str, Any]]], replies: Sequence[Any],
               resent: dict[str, int]) -> OrderedDict[str, list[dict[str, Any]]]:
        """Record what was written; return what must be written again: for a job whose
        list Redis lost, what its calls said so far, then its batch. ``resent`` counts,
        per job, the leading events of its batch that only say again what was said."""
        again: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        for (job_id, items), reply in zip(batch.items(), replies, strict=True):
            skip = resent.pop(job_id, 0) if resent else 0
            own = items[skip:] if skip else items
            if not reply:  # written to the list this process knew
                self.logs.written(job_id, None, own)
                continue
            status, raw = reply
            epoch = raw.decode() if isinstance(raw, bytes) else str(raw)
            if not status:
                self.logs.written(job_id, epoch, own)
                continue
            log.warning("the events of job %s were lost with Redis: its list starts again "
                        "(epoch %s)", job_id, epoch)
            catch_up = self.logs.catch_up(job_id, epoch)
            resent[job_id] = len(catch_up)
            again[job_id] = [*catch_up, *own]
        return again


class SyncPublisher:
    """Writes every event before returning; for scripts, tests and thread pools."""

    def __init__(self, client: redis.Redis, ttl_s: int, ttl_after_final_s: int) -> None:
        self._client = client
        self._script = client.register_script(_APPEND_PUBLISH)
        self._ttl_ms = ttl_s * 1000
        self._final_ttl_ms = ttl_after_final_s * 1000
        self._lists = _Lists(ttl_s)

    def publish(self, job_id: str, event: dict[str, Any], drop: Sequence[str] = ()) -> None:
        ttl = self._final_ttl_ms if event.get("final") else self._ttl_ms
        todo: Mapping[str, list[dict[str, Any]]] = {job_id: [event]}
        resent: dict[str, int] = {}
        while todo:
            _, *keys_args = self._lists.args(job_id, ttl, todo[job_id])
            reply = self._script(keys=keys_args[:3], args=keys_args[3:])
            todo = self._lists.settle(todo, [reply], resent)
        if drop:
            self._client.delete(*drop)

    def flush(self) -> None:
        return None


class CoalescingPublisher:
    """Writes inline when no write is in flight or lingering; otherwise queues for the
    next write, which takes the queue whole, job by job and in order.

    After a write, the next one waits until ``linger_s`` has passed since the last one
    began, so a busy process sends one pipeline per linger instead of one per event. It
    runs in a greenlet of its own: a job's greenlet writes at most once for all."""

    def __init__(self, client: redis.Redis, ttl_s: int, ttl_after_final_s: int,
                 linger_s: float = 0.0) -> None:
        self._client = client
        self._lists = _Lists(ttl_s)
        # EVALSHA directly: a registered Script in a pipeline costs an extra SCRIPT EXISTS
        # round trip on every execute. Keyed by whether the write is a retry.
        self._shas: dict[bool, str] = {}
        self._ttl_ms = ttl_s * 1000
        self._final_ttl_ms = ttl_after_final_s * 1000
        self._linger_s = linger_s
        self._pending: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._final: set[str] = set()
        self._drop: dict[str, Sequence[str]] = {}
        # A write in flight, or one scheduled: either takes whatever is queued.
        self._busy = False
        self._scheduled: gevent.Greenlet | None = None
        # Someone waits in ``flush``: write what is queued without lingering.
        self._hurry = False
        self._last_write = float("-inf")
        self._idle = Event()
        self._idle.set()

    def publish(self, job_id: str, event: dict[str, Any], drop: Sequence[str] = ()) -> None:
        """Queue ``event`` (not to be changed afterwards: it is encoded when written)."""
        queued = self._pending.setdefault(job_id, [])
        if queued and _joinable(queued[-1], event):
            queued[-1] = _joined(queued[-1], event)
        else:
            queued.append(event)
        if event.get("final"):
            self._final.add(job_id)
        if drop:
            self._drop[job_id] = drop
        if self._busy:
            return
        self._busy = True
        self._idle.clear()
        wait = self._last_write + self._linger_s - time.monotonic()
        if wait > 0:
            self._scheduled = gevent.spawn_later(wait, self._write_queued)
        else:
            # No hand-off to another greenlet: an idle stream costs one round trip per
            # event and no extra wake-up of the event loop.
            self._write_queued()

    def flush(self) -> None:
        """Block until everything published so far is in Redis (written without waiting
        out the linger: a step that flushes is about to hand its stage on)."""
        if not self._busy:
            return
        self._hurry = True
        scheduled, self._scheduled = self._scheduled, None
        if scheduled is not None:
            scheduled.kill(block=False)
            self._write_queued()
        self._idle.wait()

    def _write_queued(self) -> None:
        self._scheduled = None
        try:
            batch, self._pending = self._pending, OrderedDict()
            final, self._final = self._final, set()
            drop, self._drop = self._drop, {}
            self._last_write = time.monotonic()
            self._write(batch, final, drop)
        finally:
            if self._pending:
                # Queued during the write: the next write, in a greenlet of its own.
                wait = 0.0 if self._hurry else \
                    self._last_write + self._linger_s - time.monotonic()
                self._scheduled = gevent.spawn_later(max(wait, 0.0), self._write_queued)
            else:
                self._busy = self._hurry = False
                self._idle.set()

    def _write(self, batch: OrderedDict[str, list[dict[str, Any]]], final: set[str],
               drop: dict[str, Sequence[str]]) -> None:
        delay = 0.05
        retry = False
        # Per job: the leading events of its batch that say again what Redis lost.
        resent: dict[str, int] = {}
        while batch:
            try:
                sha = self._sha(retry)
                pipe = self._client.pipeline(transaction=False)
                scripts = []
                for job_id, items in batch.items():
                    ttl = self._final_ttl_ms if job_id in final else self._ttl_ms
                    scripts.append(len(pipe))
                    pipe.evalsha(sha, *self._lists.args(job_id, ttl, items))
                    if job_id in drop:
                        pipe.delete(*drop[job_id])
                replies = pipe.execute()
            except redis.exceptions.NoScriptError:
                # Redis restarted and forgot the scripts: load them again, then retry.
                self._shas.clear()
                continue
            except redis.RedisError as exc:
                # Events must not be dropped, nor written twice: keep the batch and retry
                # until Redis is back, skipping what the failed write already appended.
                log.warning("publishing %d job batches failed, retrying: %s", len(batch), exc)
                retry = True
                gevent.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            # A job whose list was lost goes again (rarely: Redis restarted empty).
            batch = self._lists.settle(batch, [replies[i] for i in scripts], resent)
            drop, retry = {}, False

    def _sha(self, retry: bool) -> str:
        if retry not in self._shas:
            script = _APPEND_PUBLISH_ONCE if retry else _APPEND_PUBLISH
            self._shas[retry] = str(self._client.script_load(script))
        return self._shas[retry]
