"""Alembic migrations of the listener's database (run by `listener.store.Store.migrate`)."""
