"""Alembic environment: runs on the connection that `listener.store` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from listener.models import metadata

_MIGRATION_LOCK = 0x5AFE6A4D  # advisory lock id: instances starting together migrate in turn


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
