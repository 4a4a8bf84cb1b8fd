"""One definition of a write across several tables, run as one statement or as steps.

A write is a list of named steps, each one SQL statement (a ``SELECT``, or an
``INSERT``/``UPDATE`` ``… RETURNING``) that may read the rows an earlier step returned
by writing its name in braces: ``FROM {settled} s``. PostgreSQL runs the whole write as
one statement (each step a CTE of one ``WITH``), so a hot write is one round trip and
locks its rows only while the server runs it. SQLite cannot put a write in a ``WITH``:
it runs the steps in order, in the caller's transaction, and a later step reads an
earlier one's returned rows as an inline table. Either way a step that reads an empty
step writes nothing, and the rows written are the same, provided a step reads what an
earlier step wrote only through that step's name (a CTE does not see its siblings'
writes in the tables).

The SQL of a step is portable: ``CASE`` rather than ``LEAST``, ``WHERE true`` before an
``INSERT … SELECT``'s ``ON CONFLICT`` (SQLite would read the ``ON`` as a join's).
Where a dialect needs its own text (a JSON table function), ``sources`` names the
fragment and gives it per dialect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, TextClause, text
from sqlalchemy.sql.elements import BindParameter


@dataclass(frozen=True)
class Step:
    name: str
    sql: str
    # What it returns, in order: an inline table on SQLite needs its column names.
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Write:
    steps: tuple[Step, ...]
    # The write's answer, a SELECT over steps (braced names, as in a step).
    answer: str
    # Named fragments that differ by dialect: {name: {"postgresql": …, "sqlite": …}}.
    sources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Typed parameters, for SQLite (PostgreSQL's one statement takes adapted values).
    binds: tuple[BindParameter[Any], ...] = ()
    _one_statement: TextClause = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once: writes are module constants, run on every request's path.
        object.__setattr__(self, "_one_statement", self._text(self.postgres().text))

    def postgres(self) -> TextClause:
        """The write as one PostgreSQL statement."""
        names = self._names("postgresql")
        ctes = ",\n".join(f"{s.name} AS ({s.sql.format(**names).strip()})" for s in self.steps)
        return text(f"WITH {ctes}\n{self.answer.format(**names)}")

    def run(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run the write on ``conn``, in its transaction; the answer's row, if any."""
        if conn.dialect.name != "postgresql":
            return self.run_in_steps(conn, params)
        row = conn.execute(self._one_statement, params).first()
        return None if row is None else tuple(row)

    def run_in_steps(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run the write step by step on ``conn`` (in its transaction); the answer's row."""
        names = self._names("sqlite")
        bound = dict(params)
        for step in self.steps:
            result = conn.execute(self._text(step.sql.format(**names)), bound)
            if step.columns:
                names[step.name], values = _inline(step, result.all())
                bound.update(values)
        row = conn.execute(self._text(self.answer.format(**names)), bound).first()
        return None if row is None else tuple(row)

    def _names(self, dialect: str) -> dict[str, str]:
        names = {s.name: s.name for s in self.steps}
        names.update({k: v[dialect] for k, v in self.sources.items()})
        return names

    def _text(self, sql: str) -> TextClause:
        clause = text(sql)
        used = [b for b in self.binds if f":{b.key}" in sql]
        return clause.bindparams(*used) if used else clause


def _inline(step: Step, rows: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """The rows as a table a later statement can read, and the parameters it binds."""
    if not rows:
        nulls = ", ".join(f"NULL AS {c}" for c in step.columns)
        return f"(SELECT {nulls} WHERE 0)", {}
    selects: list[str] = []
    values: dict[str, Any] = {}
    for i, row in enumerate(rows):
        cols: list[str] = []
        for c, value in zip(step.columns, row, strict=True):
            key = f"_{step.name}_{i}_{c}"
            values[key] = value
            cols.append(f":{key} AS {c}")
        selects.append("SELECT " + ", ".join(cols))
    return "(" + " UNION ALL ".join(selects) + ")", values
