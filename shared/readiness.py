"""Zero-timeout socket readiness checks that skip gevent's hub, for pooled connections.

httpcore checks each idle pooled connection, and redis-py each connection it takes from
its pool, with ``select.poll`` and a zero timeout. Under gevent that poll is a trip
through the hub: every ready greenlet runs first, so a scan of a hundred keep-alive
connections adds hundreds of ms to a call's first token, and each Redis command pays
for watchers and a switch it never needed. The original poll with a zero timeout never
blocks, so these checks use it.
"""

from __future__ import annotations

import select
from typing import Any

from gevent import monkey

_installed = False
_original_poll = monkey.get_original("select", "poll")


def readable(sock: object) -> bool:
    """Whether the socket has something to read (data, its end, an error) right now;
    never blocks, never yields. A closed socket counts as readable."""
    fileno = getattr(sock, "fileno", None)
    fd = fileno() if fileno is not None else -1
    if fd < 0:
        return True
    poller = _original_poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def install() -> None:
    """Swap in non-yielding checks, once, where gevent has patched ``select``."""
    global _installed
    if _installed or not monkey.is_module_patched("select"):
        return
    import httpcore._backends.sync as httpcore_sync
    import redis._parsers.hiredis as redis_hiredis

    httpcore_sync.is_socket_readable = readable
    original_can_read = redis_hiredis._socket_can_read

    def socket_can_read(sock: Any, timeout: float) -> bool:
        if timeout != 0 or (hasattr(sock, "pending") and sock.pending()):
            return bool(original_can_read(sock, timeout))
        return readable(sock)

    redis_hiredis._socket_can_read = socket_can_read
    _installed = True
