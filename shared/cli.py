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
def keys_create(
    account: str, credits_: Decimal, tier: str, zero_retention: bool, name: str
) -> None:
    """Create a key; it is printed once, as the last line."""
    from shared import keys as keymod
    from shared.db import session_scope
    from shared.migrate import upgrade
    from shared.settings import get_settings

    upgrade(get_settings().database_url)
    with session_scope() as session:
        key = keymod.create_key(
            session, account, credits=credits_, tier=tier, zero_retention=zero_retention, name=name
        )
    console.print(f"created a {tier} key for account [bold]{account}[/] with {credits_} credits")
    click.echo(key)


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
        ledger.grant(session, acct.id, credits_, note="operator grant")
        session.flush()
        balance = ledger.available(session, acct.id)
    console.print(f"granted {credits_} credits to {account}; available now {balance}")


if __name__ == "__main__":
    main()
