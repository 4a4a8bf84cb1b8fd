"""The ``chorus`` command: start the stack, manage accounts, keys and credits."""

from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation

import click
from rich.console import Console

console = Console(stderr=True)


def _credits(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter("must be a number") from None
    if amount < 0 or not amount.is_finite():
        raise click.BadParameter("must be zero or more")
    return amount


@click.group()
def main() -> None:
    """Chorus, a multi-model LLM gateway."""


@main.command()
@click.option("--port", type=int, default=None, help="API port (default $PORT or 8000).")
def up(port: int | None) -> None:
    """Run API, workers, beat and the mock provider in the foreground (Ctrl-C stops all)."""
    from shared.stack import up as run_up

    sys.exit(run_up(port))


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to $CHORUS_DATABASE_URL."""
    from shared.migrate import upgrade
    from shared.settings import get_settings

    upgrade(get_settings().database_url)
    console.print("database is at the newest schema")


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--account", required=True, help="Account name (created if new).")
@click.option("--credits", "credits_", callback=_credits, default="0", help="Credits to grant.")
@click.option("--tier", type=click.Choice(["free", "paid"]), default="free")
@click.option("--zero-retention", is_flag=True, help="Never store prompts or completions.")
@click.option("--name", default="", help="A label for the key.")
@click.option("--budget", callback=_credits, default=None,
              help="Cap on the credits this key may spend in total (default: no cap).")
def keys_create(
    account: str, credits_: Decimal, tier: str, zero_retention: bool, name: str,
    budget: Decimal | None,
) -> None:
    """Create a key; it is printed once, as the last line."""
    from shared import keys as keymod
    from shared.db import session_scope
    from shared.migrate import upgrade
    from shared.settings import get_settings

    upgrade(get_settings().database_url)
    with session_scope() as session:
        key = keymod.create_key(
            session, account, credits=credits_, tier=tier, zero_retention=zero_retention, name=name,
            budget=budget,
        )
    capped = f", capped at {budget} credits" if budget is not None else ""
    console.print(
        f"created a {tier} key for account [bold]{account}[/] with {credits_} credits{capped}"
    )
    click.echo(key)


@keys.command("budget")
@click.option("--prefix", required=True, help="The key's first 10 characters (ch_sk_...).")
@click.option("--credits", "credits_", callback=_credits, default=None,
              help="The new cap; leave out to remove the cap.")
def keys_budget(prefix: str, credits_: Decimal | None) -> None:
    """Set or remove a key's spending cap."""
    from sqlalchemy import select

    from shared import budgets
    from shared.db import session_scope
    from shared.tables import ApiKey

    with session_scope() as session:
        ids = session.execute(
            select(ApiKey.id).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        ).scalars().all()
        if len(ids) != 1:
            raise click.ClickException(
                f"{len(ids)} live keys start with {prefix!r}; need exactly one"
            )
        budgets.set_key_budget(session, ids[0], credits_)
    console.print(f"key {prefix}: cap {'removed' if credits_ is None else f'{credits_} credits'}")


@main.group()
def credits() -> None:
    """Account credits."""


@credits.command("grant")
@click.option("--account", required=True)
@click.option("--credits", "credits_", callback=_credits, required=True)
def credits_grant(account: str, credits_: Decimal) -> None:
    """Add credits to an account's wallet (a ledger grant)."""
    from sqlalchemy import select

    from shared import ledger
    from shared.db import session_scope
    from shared.tables import Account

    with session_scope() as session:
        acct = session.execute(select(Account).where(Account.name == account)).scalar_one_or_none()
        if acct is None:
            raise click.ClickException(f"no account named {account!r}")
        try:
            ledger.grant(session, acct.id, credits_, note="operator grant")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--credits") from exc
        session.flush()
        balance = ledger.available(session, acct.id)
    console.print(f"granted {credits_} credits to {account}; available now {balance}")


@credits.command("refund")
@click.option("--job", "job_id", required=True, help="The job to refund.")
@click.option("--credits", "credits_", callback=_credits, default=None,
              help="How much (default: all it was charged). A job is refunded at most once.")
@click.option("--note", default="operator refund")
def credits_refund(job_id: str, credits_: Decimal | None, note: str) -> None:
    """Give back what a settled job was charged (a ledger refund)."""
    from shared import ledger
    from shared.db import session_scope

    with session_scope() as session:
        try:
            amount = ledger.refund(session, job_id, credits_, note=note)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    console.print(f"job {job_id}: {amount} credits refunded (a job is refunded at most once)")


@credits.command("show")
@click.option("--account", required=True)
def credits_show(account: str) -> None:
    """Print a wallet and check it against its ledger (exit 1 if they disagree)."""
    from sqlalchemy import select

    from shared import ledger
    from shared.db import session_scope
    from shared.tables import Account

    with session_scope() as session:
        acct_id = session.execute(
            select(Account.id).where(Account.name == account)
        ).scalar_one_or_none()
        if acct_id is None:
            raise click.ClickException(f"no account named {account!r}")
        wallet, summed = ledger.audit(session, acct_id)
    click.echo(f"balance {wallet.balance}  reserved {wallet.reserved}  "
               f"available {wallet.available}")
    if wallet != summed:
        raise click.ClickException(
            f"ledger sums to balance {summed.balance}, reserved {summed.reserved}"
        )
    console.print("the ledger sums to the wallet")


if __name__ == "__main__":
    main()
