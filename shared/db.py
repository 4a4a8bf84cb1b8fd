"""One SQLAlchemy engine per process, tuned for PostgreSQL or the embedded SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[Session]] = {}
_autocommit: dict[str, Engine] = {}


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


def make_engine(url: str, *, autocommit: bool = False) -> Engine:
    """``autocommit``: a pool of its own whose connections are put in autocommit once,
    when they connect (switching a pooled connection per checkout costs round trips)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets the API read while a worker writes; busy_timeout waits out writers.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if _gevent_patched():
        # psycopg2 blocks the whole process unless told to yield to the gevent hub.
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
    # Bounded so N API + M worker processes stay under PostgreSQL's max_connections;
    # no pre-ping (a round trip per checkout): stale connections are recycled instead.
    # The hot path runs single statements; transactions (budgets, accounts, admin) are
    # rarer and get a pool half the size.
    import os

    size = int(os.environ.get("CHORUS_DB_POOL_SIZE") or 10)
    overflow = int(os.environ.get("CHORUS_DB_MAX_OVERFLOW") or 5)
    extra: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    return create_engine(
        url,
        pool_size=size if autocommit else max(2, size // 2),
        max_overflow=overflow,
        pool_recycle=1800,
        pool_timeout=30,
        **extra,
    )


def _resolve(url: str | None) -> str:
    if url is None:
        from shared.settings import get_settings

        url = get_settings().database_url
    if url not in _engines:
        _engines[url] = make_engine(url)
        _makers[url] = sessionmaker(_engines[url], expire_on_commit=False)
        _autocommit[url] = (
            make_engine(url, autocommit=True) if _engines[url].dialect.name == "postgresql"
            else _engines[url].execution_options(isolation_level="AUTOCOMMIT")
        )
    return url


def get_engine(url: str | None = None) -> Engine:
    return _engines[_resolve(url)]


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session committed on success and rolled back on any error."""
    session = _makers[_resolve(url)]()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_postgres(url: str | None = None) -> bool:
    return _engines[_resolve(url)].dialect.name == "postgresql"


@contextmanager
def autocommit(url: str | None = None) -> Iterator[Connection]:
    """A pooled connection on which each statement commits by itself.

    For work that is one statement: one round trip instead of BEGIN, statement, COMMIT,
    and no row lock held while this process gets round to sending the COMMIT."""
    with _autocommit[_resolve(url)].connect() as conn:
        yield conn


def reset_engines() -> None:
    for engine in [*_engines.values(), *_autocommit.values()]:
        engine.dispose()
    _engines.clear()
    _makers.clear()
    _autocommit.clear()
