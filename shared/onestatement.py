"""A job's opening and closing as one PostgreSQL statement each, run in autocommit.

Every job of an account holds and settles credits on the same ``accounts`` row. In a
transaction of several statements that row stays locked from the ``UPDATE`` until the
process has received the reply and sent ``COMMIT``; under load that wait is the event
loop's, and every other request of the account queues behind it. As one statement the
row is locked only while the server runs it. The rules are those of ``shared.ledger``
and ``shared.budgets``: the hold is conditional on the balance, a job settles once (the
job's status guards it, the ledger's unique ``(job_id, kind)`` too), the charge is
capped at the hold.

The close is written once (``shared.steps``) and SQLite runs the same steps in a
transaction. The open is PostgreSQL's alone: SQLite holds through ``shared.ledger``.
Credits here are the columns' micro-credits (``shared.credits``), not ``Decimal``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from shared import dbapi, ledger, steps
from shared.credits import from_micros, micros

# ``plain``: the key has no cap and the account brings no provider key of its own, so
# the hold computed without looking is the hold (the common case: one round trip in all).
_OPEN = steps.Write(
    steps=(
        steps.Step("plain", """
    SELECT 1 AS one FROM api_keys k
    WHERE k.id = :key_id AND k.budget IS NULL
      AND NOT EXISTS (SELECT 1 FROM provider_keys p WHERE p.account_id = :account_id)
""", ("one",)),
        *ledger.holding(" AND (NOT :guarded OR EXISTS (SELECT 1 FROM {plain}))"),
        steps.Step("job", """
    INSERT INTO jobs (id, account_id, key_id, kind, status, queue, request, session_id,
                      credits_reserved, byok, created_at)
    SELECT :job_id, id, :key_id, :kind, 'queued', :queue, :request, :session_id, :hold,
           :byok, :now
    FROM {held}
"""),
    ),
    answer="SELECT (SELECT count(*) FROM {plain}), (SELECT count(*) FROM {held})",
)

# The charge is the price capped at the job's hold (0 if it never held anything); it is
# computed once, in ``ended``, and the settle row, the wallet and the budgets follow it
# (``ledger.settling``, the steps of every settlement). The hold is read from the job's
# own row, which ``ended`` locks: an extension (``shared.extension``) adds to that row
# with the ledger's, so a close that waited for one releases what it added (the
# ``reserve`` step reads the statement's snapshot, which may predate it), and an
# extension that waited for the close finds the job ended and adds nothing.
_CLOSE = steps.Write(
    steps=(
        ledger.RESERVED,
        steps.Step("ended", """
    UPDATE jobs SET status = :status, result = :result, error = :error,
        resolved_model = :resolved_model, finished_at = :now,
        credits_charged = CASE WHEN NOT EXISTS (SELECT 1 FROM {reserve}) THEN 0
            WHEN credits_reserved < :price THEN credits_reserved ELSE :price END
    WHERE id = :job_id AND status NOT IN ('succeeded', 'failed', 'cancelled')
    RETURNING account_id, credits_charged, credits_reserved AS hold
""", ("account_id", "credits_charged", "hold")),
        steps.Step("logged", """
    INSERT INTO request_log (job_id, account_id, model, provider, role, prompt_tokens,
        completion_tokens, ttft_ms, latency_ms, status, cost, error, created_at)
    SELECT :job_id, e.account_id, c.model, c.provider, c.role, c.prompt_tokens,
        c.completion_tokens, c.ttft_ms, c.latency_ms, c.status, c.cost, c.error, :now
    FROM {ended} e, {calls}
"""),
        *ledger.settling("ended"),
    ),
    answer="SELECT credits_charged FROM {ended}",
    sources={"calls": {
        "postgresql": """json_to_recordset(CAST(:calls AS json)) AS c(model text,
        provider text, role text, prompt_tokens int, completion_tokens int, ttft_ms numeric,
        latency_ms numeric, status text, cost bigint, error text)""",
        "sqlite": "(SELECT " + ", ".join(f"json_extract(value, '$.{c}') AS {c}" for c in (
            "model", "provider", "role", "prompt_tokens", "completion_tokens", "ttft_ms",
            "latency_ms", "status", "cost", "error")) + " FROM json_each(:calls)) AS c",
    }},
    binds=(ledger.NOW,),
)


_OPEN_SQL = dbapi.compiled(_OPEN.postgres())
_CLOSE_SQL = dbapi.compiled(_CLOSE.postgres())


@dataclass(frozen=True)
class Opened:
    plain: bool  # no key cap, no provider keys of the account's own
    held: bool  # the job is stored and its credits held


def open_job(
    conn: Connection,
    *,
    job_id: str,
    account_id: int,
    key_id: int,
    kind: str,
    request: dict[str, Any] | None,
    session_id: str | None,
    hold: Decimal,
    byok: list[str] | None,
    guarded: bool,
    queue: str = "interactive",
) -> Opened:
    """Hold ``hold`` credits, write the ``reserve`` row and store the queued job, or do
    nothing at all when the wallet cannot cover the hold or, if ``guarded``, when the key
    has a cap or the account provider keys (the hold then needs their terms)."""
    row = dbapi.fetch_one(conn, _OPEN_SQL, {
        "job_id": job_id, "account_id": account_id, "key_id": key_id, "kind": kind,
        "request": _json_or_null(request), "session_id": session_id, "hold": micros(hold),
        "byok": _json_or_null(byok), "now": datetime.now(UTC), "guarded": guarded,
        "queue": queue,
    })
    assert row is not None  # a bare SELECT: always one row
    plain, held = row
    return Opened(plain=bool(plain), held=bool(held))


def close_job(
    conn: Connection,
    *,
    job_id: str,
    status: str,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
    resolved_model: str | None,
    calls: list[dict[str, Any]],
    price: Decimal,
) -> Decimal | None:
    """End the job, log its calls and settle its credits and budgets; the amount charged,
    or None (and nothing written) when the job had already ended.

    PostgreSQL: one statement, on an autocommit ``conn``. SQLite: the same steps, in
    ``conn``'s transaction (the caller commits)."""
    params = {
        "job_id": job_id, "status": status,
        # As the JSON columns store None: JSON null, not SQL NULL.
        "result": json.dumps(result), "error": json.dumps(error),
        "resolved_model": resolved_model,
        "calls": json.dumps([{**c, "cost": micros(c["cost"])} for c in calls], default=str),
        "price": micros(max(Decimal(0), price)), "now": datetime.now(UTC),
    }
    if conn.dialect.name == "postgresql":
        row = dbapi.fetch_one(conn, _CLOSE_SQL, params)
    else:
        row = _CLOSE.run_in_steps(conn, params)
    return None if row is None or row[0] is None else from_micros(row[0])


def _json_or_null(value: Any) -> str | None:
    return None if value is None else json.dumps(value)
