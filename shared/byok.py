"""Accounts' own provider keys (BYOK), sealed at rest with a key derived from the environment.

A key is sealed with AES-256-GCM under a key derived (HKDF-SHA256) from
``CHORUS_SECRET_KEY``; the account id and provider name are bound in as associated
data, so a sealed value copied to another account or provider does not open. The clear
key exists only in the request that stores it and in the worker that uses it: it is
never returned by the API, logged, or put in an error message.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.tables import ProviderKey, as_utc

VERSION = "v1"
# Job kinds whose workers run calls on the account's own keys, so their holds leave those
# calls' tokens out. Pipeline kinds join once their steps load the keys too: holding less
# than the server-key calls cost would let a charge be capped below the real cost.
JOB_KINDS = frozenset({"chat"})
MIN_SECRET_CHARS = 16
NONCE_BYTES = 12


class ByokError(Exception):
    """BYOK cannot work: no server secret, or a sealed key that does not open.

    Messages name the provider at most, never any part of a key.
    """


@dataclass(frozen=True)
class StoredKey:
    provider: str
    created_at: datetime
    updated_at: datetime

    def view(self) -> dict[str, str]:
        return {
            "provider": self.provider,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@lru_cache(maxsize=4)
def _cipher(secret: str) -> AESGCM:
    if len(secret) < MIN_SECRET_CHARS:
        raise ByokError(
            f"BYOK needs CHORUS_SECRET_KEY set to at least {MIN_SECRET_CHARS} characters"
        )
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"chorus byok v1").derive(
        secret.encode()
    )
    return AESGCM(key)


def check_secret(secret: str) -> None:
    """Raise ``ByokError`` unless the server can seal keys."""
    _cipher(secret)


def _context(account_id: int, provider: str) -> bytes:
    return f"{account_id}:{provider}".encode()


def seal(secret: str, account_id: int, provider: str, api_key: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = _cipher(secret).encrypt(nonce, api_key.encode(), _context(account_id, provider))
    return f"{VERSION}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def unseal(secret: str, account_id: int, provider: str, token: str) -> str:
    version, _, body = token.partition(":")
    if version != VERSION:
        raise ByokError(f"the stored key for {provider!r} has an unknown format")
    try:
        raw = base64.urlsafe_b64decode(body.encode())
        clear = _cipher(secret).decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], _context(account_id, provider)
        )
    except (InvalidTag, ValueError, binascii.Error) as exc:
        # Chained for the log's traceback; neither exception carries key material.
        raise ByokError(
            f"the stored key for {provider!r} cannot be decrypted (was CHORUS_SECRET_KEY "
            "changed?); store it again"
        ) from exc
    return clear.decode()


def put(session: Session, secret: str, account_id: int, provider: str, api_key: str) -> StoredKey:
    """Store (or replace) the account's key for a provider."""
    sealed = seal(secret, account_id, provider, api_key)
    now = datetime.now(UTC)
    replace = (
        update(ProviderKey)
        .where(ProviderKey.account_id == account_id, ProviderKey.provider == provider)
        .values(sealed=sealed, updated_at=now)
        .returning(ProviderKey.created_at)
        .execution_options(synchronize_session=False)
    )
    created = session.execute(replace).scalar_one_or_none()
    if created is None:
        try:
            with session.begin_nested():
                session.add(ProviderKey(account_id=account_id, provider=provider,
                                        sealed=sealed, created_at=now, updated_at=now))
            created = now
        except IntegrityError:
            # A concurrent request stored one first; ours is the newer, so it wins.
            created = session.execute(replace).scalar_one()
    return StoredKey(provider, as_utc(created), now)


def listing(session: Session, account_id: int) -> list[StoredKey]:
    rows = session.execute(
        select(ProviderKey.provider, ProviderKey.created_at, ProviderKey.updated_at)
        .where(ProviderKey.account_id == account_id)
        .order_by(ProviderKey.provider)
    ).all()
    return [StoredKey(p, as_utc(c), as_utc(u)) for p, c, u in rows]


def remove(session: Session, account_id: int, provider: str) -> bool:
    result = session.execute(
        delete(ProviderKey).where(
            ProviderKey.account_id == account_id, ProviderKey.provider == provider
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def providers(session: Session, account_id: int) -> list[str]:
    """Which providers the account brings its own key for (no decryption needed)."""
    return list(
        session.execute(
            select(ProviderKey.provider)
            .where(ProviderKey.account_id == account_id)
            .order_by(ProviderKey.provider)
        ).scalars()
    )


def load(session: Session, secret: str, account_id: int, wanted: list[str]) -> dict[str, str]:
    """Provider -> clear key for the ``wanted`` providers; ``ByokError`` if one is missing.

    A job's hold left out the token costs of exactly these providers, so running one of
    them on the server's key instead would bill tokens nobody reserved.
    """
    rows = session.execute(
        select(ProviderKey.provider, ProviderKey.sealed).where(
            ProviderKey.account_id == account_id, ProviderKey.provider.in_(wanted)
        )
    ).all()
    keys = {p: unseal(secret, account_id, p, sealed) for p, sealed in rows}
    missing = sorted(set(wanted) - set(keys))
    if missing:
        raise ByokError(f"the account's own key for {', '.join(map(repr, missing))} was removed")
    return keys
