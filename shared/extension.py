"""Extending a running job's hold as its answers grow: one conditional write, all or nothing.

A job is held for what its calls are likely to cost (``shared.pricing``); a call that
streams past that asks for more. The extension adds the same amount to the wallet's
``reserved``, the job's ``reserve`` ledger row and ``credits_reserved``, and every
budget the job holds on (``budget_holds`` and ``budgets.reserved``), or to none of them:
it is refused when the wallet's available credits or a budget's room cannot cover it,
or when the job has already ended (its hold was settled, and must stay released).

On PostgreSQL it is one statement in autocommit. It locks the job's row first, as a
close does (``shared.onestatement``), so an extension and a close of the same job take
turns: the close releases what the extension added, or the extension finds the job
ended. Then the wallet's row and the budgets' rows are locked and checked as they stand
(a locking read sees the latest committed row, not the statement's snapshot), in the
order the close updates them. SQLite runs the same steps in one transaction, whose
first step writes (the job's row), so the steps after it read under the write lock.
Credits here are the columns' micro-credits (``shared.credits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection

from shared import dbapi, steps
from shared.credits import micros

ENDED = "('succeeded', 'failed', 'cancelled')"
# A budget's cap: its own limit, else the key's budget or the account's session default.
_CAP = """COALESCE(b.limit_credits, CASE b.scope
        WHEN 'key' THEN (SELECT k.budget FROM api_keys k, jobs j
                         WHERE j.id = :job_id AND k.id = j.key_id)
        ELSE (SELECT a.session_budget FROM accounts a WHERE a.id = b.account_id) END)"""

_EXTEND = steps.Write(
    steps=(
        steps.Step("gate", "{gate_sql}", ("account_id",)),
        steps.Step("wallet", """
    SELECT id FROM accounts
    WHERE id = (SELECT account_id FROM {gate}) AND balance - reserved >= :hold {lock}
""", ("id",)),
        steps.Step("caps", f"""
    SELECT b.id AS id, CASE WHEN {_CAP} IS NULL
        OR b.spent + b.reserved + :hold <= {_CAP} THEN 1 ELSE 0 END AS fits
    FROM budgets b JOIN budget_holds h ON h.budget_id = b.id
    WHERE h.job_id = :job_id AND h.charged IS NULL AND EXISTS (SELECT 1 FROM {{wallet}})
    {{lock_budgets}}
""", ("id", "fits")),
        steps.Step("held", """
    UPDATE accounts SET reserved = reserved + :hold
    WHERE id = (SELECT id FROM {wallet}) AND balance - reserved >= :hold
      AND NOT EXISTS (SELECT 1 FROM {caps} c WHERE c.fits = 0)
    RETURNING id
""", ("id",)),
        steps.Step("job", """
    UPDATE jobs SET credits_reserved = credits_reserved + :hold
    WHERE id = :job_id AND EXISTS (SELECT 1 FROM {held})
"""),
        steps.Step("entry", """
    UPDATE ledger SET hold = hold + :hold
    WHERE job_id = :job_id AND kind = 'reserve' AND EXISTS (SELECT 1 FROM {held})
"""),
        steps.Step("budget_held", """
    UPDATE budget_holds SET amount = amount + :hold
    WHERE job_id = :job_id AND charged IS NULL AND EXISTS (SELECT 1 FROM {held})
    RETURNING budget_id
""", ("budget_id",)),
        steps.Step("budget_reserved", """
    UPDATE budgets SET reserved = budgets.reserved + :hold
    FROM {budget_held} h WHERE budgets.id = h.budget_id
"""),
    ),
    answer="""SELECT (SELECT count(*) FROM {gate}), (SELECT count(*) FROM {wallet}),
    (SELECT count(*) FROM {caps} c WHERE c.fits = 0), (SELECT count(*) FROM {held})""",
    sources={
        # PostgreSQL: lock the job's row (a close waits, or is waited for). SQLite: a
        # write that changes nothing, so the transaction holds the write lock from here.
        "gate_sql": {
            "postgresql": f"SELECT account_id FROM jobs WHERE id = :job_id "
                          f"AND status NOT IN {ENDED} FOR NO KEY UPDATE",
            "sqlite": f"UPDATE jobs SET status = status WHERE id = :job_id "
                      f"AND status NOT IN {ENDED} RETURNING account_id",
        },
        "lock": {"postgresql": "FOR NO KEY UPDATE", "sqlite": ""},
        "lock_budgets": {"postgresql": "FOR NO KEY UPDATE OF b", "sqlite": ""},
    },
)
_EXTEND_SQL = dbapi.compiled(_EXTEND.postgres())

OK = "ok"
ENDED_JOB = "job_ended"
INSUFFICIENT = "insufficient_credits"
OVER_BUDGET = "budget_exceeded"


@dataclass(frozen=True)
class Extension:
    """What became of an extension: ``OK``, or why nothing was held."""

    outcome: str

    @property
    def held(self) -> bool:
        return self.outcome == OK


def extend(conn: Connection, job_id: str, credits: Decimal) -> Extension:
    """Add ``credits`` to the running job's hold, or nothing at all.

    PostgreSQL: one statement, on an autocommit ``conn``. SQLite: the same steps, in
    ``conn``'s transaction (the caller commits)."""
    hold = micros(credits)
    if hold <= 0:
        raise ValueError("an extension must be a positive number of credits")
    params = {"job_id": job_id, "hold": hold}
    if conn.dialect.name == "postgresql":
        row = dbapi.fetch_one(conn, _EXTEND_SQL, params)
    else:
        row = _EXTEND.run_in_steps(conn, params)
    assert row is not None  # a bare SELECT: always one row
    gate, _wallet, over, held = (int(v) for v in row)
    if held:
        return Extension(OK)
    if not gate:
        return Extension(ENDED_JOB)
    if over:
        return Extension(OVER_BUDGET)
    return Extension(INSUFFICIENT)
