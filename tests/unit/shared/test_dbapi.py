"""Statements on the DBAPI cursor fail as SQLAlchemy's own errors, their parameter
list left out of the message, and a dropped connection leaves the pool, as through
``Connection.execute``. Real PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError

from shared import dbapi
from shared.db import autocommit

SELECT_INT = dbapi.compiled(text("SELECT CAST(:value AS integer)"))


def test_a_row_comes_back_as_a_tuple(pg_url: str) -> None:
    with autocommit(pg_url) as conn:
        assert dbapi.fetch_one(conn, SELECT_INT, {"value": "41"}) == (41,)


def test_a_statement_that_fails_raises_sqlalchemys_error_without_its_parameters(
        pg_url: str) -> None:
    with autocommit(pg_url) as conn:
        with pytest.raises(DataError) as err:
            dbapi.fetch_one(conn, SELECT_INT, {"value": "not a number"})
        assert "[SQL parameters hidden" in str(err.value)
        # The connection is still good for the next statement.
        assert dbapi.fetch_one(conn, SELECT_INT, {"value": "1"}) == (1,)


def test_a_dropped_connection_is_invalidated_and_the_pool_recovers(pg_url: str) -> None:
    with autocommit(pg_url) as conn:
        pid = dbapi.fetch_one(conn, dbapi.compiled(text("SELECT pg_backend_pid()")), {})
        assert pid is not None
        with autocommit(pg_url) as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid[0]})
        with pytest.raises(OperationalError) as err:
            dbapi.fetch_one(conn, SELECT_INT, {"value": "1"})
        assert err.value.connection_invalidated
    for _ in range(3):  # every pooled connection that comes next works
        with autocommit(pg_url) as conn:
            assert dbapi.fetch_one(conn, SELECT_INT, {"value": "2"}) == (2,)
