"""Alembic migrations of the run store (applied by ``open_store``)."""
