"""Alembic environment: the connection comes from ``mmfl.server.store.migrate``."""

from alembic import context

from mmfl.server.store import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True
)
with context.begin_transaction():
    context.run_migrations()
