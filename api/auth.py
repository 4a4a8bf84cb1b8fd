"""Bearer-key authentication; the owner of the key is stored on ``flask.g``."""

from __future__ import annotations

import time

from flask import g, request
from sqlalchemy.exc import SQLAlchemyError

from api.errors import ApiError, unavailable
from shared import keys
from shared.db import session_scope

# Key hash -> (owner, expiry). Saves a database round trip on every request of a busy
# key; a revoked key stops working within CACHE_TTL_S.
CACHE_TTL_S = 10.0
_cache: dict[str, tuple[keys.KeyOwner, float]] = {}


def lookup_key(token: str) -> keys.KeyOwner | None:
    """The key's owner, from the process cache or the database (503 if it is down)."""
    digest = keys.hash_key(token)
    hit = _cache.get(digest)
    now = time.monotonic()
    if hit is not None and hit[1] > now:
        return hit[0]
    try:
        with session_scope() as session:
            owner = keys.lookup(session, token)
    except SQLAlchemyError as exc:
        raise unavailable("database") from exc
    if owner is not None:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[digest] = (owner, now + CACHE_TTL_S)
    return owner


def authenticate() -> keys.KeyOwner:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer key")
    owner = lookup_key(token.strip())
    if owner is None:
        raise ApiError(401, "unauthorized", "invalid API key")
    g.owner = owner
    return owner
