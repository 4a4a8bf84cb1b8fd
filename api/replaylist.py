"""The replay list as a reader sees it: one read of it, and what ends a reader there.

A list's event ids are its epoch's base plus positions (see ``shared.events``); a reader
holding an id of a lost list reads the list made again from its start.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from shared import events

Item = tuple[int, str]
# What a reader is given: an event with its sequence number, or None for a final event
# rebuilt from the database (the job's list is gone).
Delivered = tuple[int | None, str]

# KEYS[1] = replay list, KEYS[2] = its epoch; ARGV[1] = the reader's last event id (below
# 2**53). Replies {base, start, length, items from position start, last event}: the list
# read from the reader's own last event on, which tells its length; only a list shorter
# than that (none, or a lost one made again) costs a second command, LLEN and LINDEX. An
# id below the base is a position in an older list: this one is read from its start.
_READ = """
local base = string.match(redis.call('GET', KEYS[2]) or '0', '^%d+')
local pos = tonumber(ARGV[1]) - tonumber(base)
if pos < 0 then
  pos = 0
end
local start = math.max(pos - 1, 0)
local raw = redis.call('LRANGE', KEYS[1], string.format('%d', start), -1)
if #raw > 0 or pos == 0 then
  return {base, start, start + #raw, raw}
end
return {base, start, redis.call('LLEN', KEYS[1]), raw, redis.call('LINDEX', KEYS[1], -1)}
"""
_READ_SHA = hashlib.sha1(_READ.encode()).hexdigest()
# Ids at or above this are past the end of any list (lists' ids stay below 2**53).
_PAST_ANY = 2**53 - 1


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


@dataclass(frozen=True)
class ListRead:
    """The replay list as one read found it: the events after a reader's position, its
    length, its last event (0 and None: there is no list) and the base of its ids."""

    items: list[Item]
    length: int
    tail: str | None
    base: int = 0


def read_list(client: redis.Redis, job_id: str, after: int, base: int | None = None,
              seen: str | None = None) -> ListRead:
    """The events after id ``after`` (all of them when ``after`` is an id of an older
    list), knowing also the list's length and last event: a reader with nothing new to
    read learns from them whether the job has ended.

    A reader that knows its list's ``base`` and its own last event (``seen``) reads one
    LRANGE from that event on: finding it there proves the list is the one it read (a
    list made again never has an event where the lost one had it), and the reply tells
    the list's length. Any other read, or one that does not find the event there (no
    list, a shorter one, or one made again), is one script call that also reads the
    list's epoch for the base of its ids.
    """
    key = events.events_key(job_id)
    if seen is not None and base is not None and after > base:
        start = after - base - 1
        raw = [_text(r) for r in client.lrange(key, start, -1)]
        if raw and raw[0] == seen:
            items = [(after + i, r) for i, r in enumerate(raw[1:], 1)]
            return ListRead(items, start + len(raw), raw[-1], base)
    at = min(after, _PAST_ANY)
    try:
        reply = client.evalsha(_READ_SHA, 2, key, events.epoch_key(job_id), at)
    except redis.exceptions.NoScriptError:
        reply = client.eval(_READ, 2, key, events.epoch_key(job_id), at)  # loaded now
    found, start, length = int(reply[0]), int(reply[1]), int(reply[2])
    raw = [_text(r) for r in reply[3]]
    pos = max(at - found, 0)
    items = [(found + pos + i + 1, r) for i, r in enumerate(raw[pos - start:])]
    tail = raw[-1] if raw else (_text(reply[4]) if len(reply) > 4 and reply[4] else None)
    return ListRead(items, length, tail, found)


def closing(read: ListRead, last: int) -> list[Delivered] | None:
    """What ends a reader at ``last`` that the list has nothing newer for, or None while
    the job may go on (the list's last event is not final, or there is no list).

    At the final event: nothing more. Past it: the list is shorter than what the reader
    saw, so Redis lost it and the job's later events were numbered afresh (by a worker
    that could not tell, see ``workers.publisher``); its final event is the truth the
    reader still lacks.
    """
    if read.items or read.tail is None or not events.is_final(read.tail):
        return None
    at = max(last - read.base, 0)
    if read.length == at:
        return []
    if read.length < at:
        return [(read.base + read.length, read.tail)]
    return None  # appended between the commands of the read: the next read has it
