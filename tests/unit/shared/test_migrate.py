"""The migrations build exactly the schema the SQLAlchemy models describe, on SQLite and
on PostgreSQL: a model changed without its migration fails here."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from shared.migrate import upgrade
from shared.tables import Base


def drift(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_sqlite_schema_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chorus.db'}"
    upgrade(url)
    assert drift(url) == []


def test_postgres_schema_matches_the_models(pg_url: str) -> None:
    assert drift(pg_url) == []
