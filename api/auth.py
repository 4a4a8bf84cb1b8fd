"""Bearer-key authentication; the owner of the key is stored on ``flask.g``."""

from __future__ import annotations

from flask import g, request
from sqlalchemy.exc import SQLAlchemyError

from api.errors import ApiError, unavailable
from shared import keys
from shared.db import session_scope


def authenticate() -> keys.KeyOwner:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer key")
    try:
        with session_scope() as session:
            owner = keys.lookup(session, token.strip())
    except SQLAlchemyError as exc:
        raise unavailable("database") from exc
    if owner is None:
        raise ApiError(401, "unauthorized", "invalid API key")
    g.owner = owner
    return owner
