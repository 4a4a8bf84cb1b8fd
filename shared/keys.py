"""API keys: minted once, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import ledger
from shared.tables import Account, ApiKey

PREFIX = "ch_sk_"


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough; no salt or KDF needed.
    return hashlib.sha256(key.encode()).hexdigest()


def mint_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyOwner:
    key_id: int
    account_id: int
    tier: str
    zero_retention: bool


def lookup(session: Session, key: str) -> KeyOwner | None:
    if not key.startswith(PREFIX) or len(key) > 200:
        return None
    row = session.execute(
        select(ApiKey.id, Account.id, Account.tier, Account.zero_retention)
        .join(Account, Account.id == ApiKey.account_id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return KeyOwner(key_id=row[0], account_id=row[1], tier=row[2], zero_retention=row[3])


def ensure_account(
    session: Session, name: str, tier: str = "free", zero_retention: bool = False
) -> Account:
    account = session.execute(select(Account).where(Account.name == name)).scalar_one_or_none()
    if account is None:
        account = Account(
            name=name,
            tier=tier,
            zero_retention=zero_retention,
            balance=Decimal(0),
            reserved=Decimal(0),
        )
        session.add(account)
        session.flush()
    else:
        account.tier = tier
        account.zero_retention = zero_retention
    return account


def create_key(
    session: Session,
    account_name: str,
    *,
    credits: Decimal = Decimal(0),
    tier: str = "free",
    zero_retention: bool = False,
    name: str = "",
    budget: Decimal | None = None,
) -> str:
    """Create (or update) the account, grant credits, mint a key; return it in clear once."""
    account = ensure_account(session, account_name, tier, zero_retention)
    key = mint_key()
    session.add(ApiKey(account_id=account.id, key_hash=hash_key(key), prefix=key[:10], name=name,
                       budget=budget))
    if credits:
        ledger.grant(session, account.id, credits, note="key creation")
    session.flush()
    return key
