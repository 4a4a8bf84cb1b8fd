"""Hot single statements run on the DBAPI cursor of a pooled SQLAlchemy connection.

A job's hold, claim and close are one PostgreSQL statement each, on every request's
path. Through ``Connection.execute`` each also pays SQLAlchemy's per-execution work
(parameter and result processing, events, the compiled cache's lookup): about as much
CPU as the round trip itself. Here the text is compiled once, parameters are adapted by
the caller, and errors come back as SQLAlchemy's own exceptions, a dropped connection
invalidated, as ``Connection.execute`` would leave them.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import Connection, TextClause
from sqlalchemy.dialects.postgresql import psycopg2 as pg_psycopg2
from sqlalchemy.exc import DBAPIError

_DIALECT = pg_psycopg2.dialect()


def compiled(statement: TextClause) -> str:
    """The statement as psycopg2 takes it (``%(name)s`` parameters)."""
    return str(statement.compile(dialect=_DIALECT))


def fetch_one(conn: Connection, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """Run ``sql`` (from ``compiled``) and return its first row, if any."""
    fairy = conn.connection
    dbapi_conn = fairy.dbapi_connection
    cursor = fairy.cursor()
    try:
        cursor.execute(sql, params)
        row = cursor.fetchone() if cursor.description is not None else None
    except conn.dialect.loaded_dbapi.Error as exc:
        dropped = conn.dialect.is_disconnect(exc, dbapi_conn, cursor)
        if dropped:
            conn.invalidate(exc)
        # The parameter list stays out of the message: it holds prompts.
        raise DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error,
                                  hide_parameters=True, connection_invalidated=dropped,
                                  dialect=conn.dialect) from exc
    finally:
        with contextlib.suppress(Exception):
            cursor.close()
    return None if row is None else tuple(row)
