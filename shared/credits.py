"""Credits stored as whole micro-credits, so that no database can turn them into floats.

A credit is kept to six decimal places. SQLite has no exact decimal type: a
``NUMERIC(18, 6)`` column stores 164.85 as the nearest binary double, and every
``reserved = reserved + :hold`` adds a rounding error, until a wallet that should be back
at 0 reads -2.5e-15 and its ``reserved >= 0`` check refuses the settle. An integer
count of micro-credits (a ``BIGINT``) is exact on SQLite and PostgreSQL alike, adds and
compares exactly in SQL on both, and is PostgreSQL's cheapest exact arithmetic too. Up
to 9.2e12 credits fit; ``NUMERIC(18, 6)`` held 1e12.

``Credits`` presents the column as ``Decimal`` to Python, so ORM and Core callers read
and write credits as before; only raw SQL (``shared.onestatement``) sees micro-credits
and converts its parameters with ``micros`` and its results with ``from_micros``. A
selected sum of two columns (``balance - reserved``) is typed ``BIGINT`` by SQLAlchemy:
read it through ``type_coerce(expr, CREDITS)``, or read the columns.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import BigInteger
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

QUANTUM = Decimal("0.000001")
MICROS = 1_000_000


def q(value: Decimal | int | float | str) -> Decimal:
    """``value`` rounded to a whole micro-credit (half to even, as ``Decimal`` does)."""
    return Decimal(str(value)).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def micros(value: Decimal | int | float | str) -> int:
    """Credits as the integer the columns store."""
    return int(q(value).scaleb(6))


def from_micros(value: int) -> Decimal:
    """A stored integer as credits."""
    return Decimal(int(value)).scaleb(-6).quantize(QUANTUM)


class Credits(TypeDecorator[Decimal]):
    """A credit amount: ``BIGINT`` micro-credits in the database, ``Decimal`` in Python."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else micros(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else from_micros(value)

    def coerce_compared_value(self, op: Any, value: Any) -> Credits:
        # ``balance + Decimal("1.5")``: the plain value is credits too, bound as micros.
        return self

    @property
    def python_type(self) -> type[Decimal]:
        return Decimal
