"""Alembic environment, for both ways of running the revisions.

- `tenantry migrate` (and the tests) hand in a live connection through
  `config.attributes["connection"]`, so the revisions run inside whatever
  event loop the caller already has, and it sets the application role's
  password afterwards (never written into a revision).
- `alembic upgrade head`, `alembic history`, `alembic downgrade -1` ... from
  a checkout (`alembic.ini` beside this folder): the database is
  `TENANTRY_DATABASE_DIRECT_URL` or else `TENANTRY_DATABASE_URL` (as for
  `tenantry migrate`: never through a transaction pooler) or `-x url=...`, the
  application role `TENANTRY_DB_APP_ROLE`; `--sql` prints the SQL instead.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from tenantry.settings import Settings

config = context.config


def run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_on(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run)
            await connection.commit()
    finally:
        await engine.dispose()


handed_in = config.attributes.get("connection")
if handed_in is not None:
    run(handed_in)
else:
    settings = Settings()
    config.attributes.setdefault("app_role", settings.db_app_role)
    url = context.get_x_argument(as_dictionary=True).get("url") or settings.direct_database_url
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=None, literal_binds=True, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(run_on(url))
