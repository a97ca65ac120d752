"""Alembic environment: runs on a connection handed in by `tenantry.db.migrate`.

`tenantry migrate` (and the app's tests) pass a live connection through
`config.attributes["connection"]`, so migrations run inside whatever event
loop the caller already has. Running `alembic` by hand is not supported:
use `tenantry migrate`.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
