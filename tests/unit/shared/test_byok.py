"""BYOK keys are sealed at rest, bound to their account and provider, and open only here."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from shared import byok
from shared.db import session_scope
from tests.unit.shared.test_ledger import db_url, new_account

__all__ = ["db_url"]

SECRET = "unit-test-secret-0123456789"
CLEAR = "sk-live-UNIT-9f8e7d6c5b4a39281706"


def test_seal_round_trips_and_never_holds_the_clear_key() -> None:
    sealed = byok.seal(SECRET, 7, "prov", CLEAR)
    assert sealed.startswith("v1:")
    assert CLEAR not in sealed and CLEAR[-8:] not in sealed
    assert byok.unseal(SECRET, 7, "prov", sealed) == CLEAR
    # A fresh nonce each time: equal keys do not give equal ciphertexts.
    assert byok.seal(SECRET, 7, "prov", CLEAR) != sealed


@pytest.mark.parametrize(
    ("secret", "account_id", "provider"),
    [("another-secret-0123456789", 7, "prov"), (SECRET, 8, "prov"), (SECRET, 7, "other")],
)
def test_sealed_key_opens_only_for_its_secret_account_and_provider(
    secret: str, account_id: int, provider: str
) -> None:
    sealed = byok.seal(SECRET, 7, "prov", CLEAR)
    with pytest.raises(byok.ByokError) as info:
        byok.unseal(secret, account_id, provider, sealed)
    assert CLEAR not in str(info.value) and sealed not in str(info.value)


def test_tampered_or_unknown_format_is_refused() -> None:
    sealed = byok.seal(SECRET, 1, "p", CLEAR)
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    for bad in (flipped, "v9:" + sealed[3:], "v1:%%%"):
        with pytest.raises(byok.ByokError):
            byok.unseal(SECRET, 1, "p", bad)


@pytest.mark.parametrize("secret", ["", "short"])
def test_a_missing_or_weak_secret_is_refused(secret: str) -> None:
    with pytest.raises(byok.ByokError, match="CHORUS_SECRET_KEY"):
        byok.check_secret(secret)
    with pytest.raises(byok.ByokError):
        byok.seal(secret, 1, "p", CLEAR)


def test_store_list_replace_load_remove(db_url: str) -> None:
    acct = new_account(db_url)
    with session_scope(db_url) as s:
        first = byok.put(s, SECRET, acct, "prov", CLEAR)
    with session_scope(db_url) as s:
        second = byok.put(s, SECRET, acct, "prov", CLEAR + "-rotated")
        listed = byok.listing(s, acct)
    assert second.created_at == first.created_at and second.updated_at >= first.updated_at
    assert [k.view()["provider"] for k in listed] == ["prov"]
    assert set(listed[0].view()) == {"provider", "created_at", "updated_at"}
    with session_scope(db_url) as s:
        assert byok.load(s, SECRET, acct, ["prov"]) == {"prov": CLEAR + "-rotated"}
        assert byok.providers(s, acct) == ["prov"]
        assert byok.remove(s, acct, "prov") is True
        assert byok.remove(s, acct, "prov") is False
    with pytest.raises(byok.ByokError, match="removed"), session_scope(db_url) as s:
        byok.load(s, SECRET, acct, ["prov"])


def test_no_column_holds_the_clear_key(db_url: str) -> None:
    acct = new_account(db_url)
    with session_scope(db_url) as s:
        byok.put(s, SECRET, acct, "prov", CLEAR)
    with session_scope(db_url) as s:
        rows = s.execute(text("SELECT * FROM provider_keys")).all()
    dump = repr(rows)
    assert rows and CLEAR not in dump and CLEAR[-12:] not in dump
