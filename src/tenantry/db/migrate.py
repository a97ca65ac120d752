"""Create the database if missing, and apply or roll back the alembic revisions shipped in the package.

The revisions live in the checkout's top-level `migrations/` (where `alembic`
finds them through `alembic.ini`) and are installed as the package
`tenantry.migrations`, so `tenantry migrate` works from a wheel too.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tenantry.db.rls import identifier

log = logging.getLogger(__name__)

MIGRATIONS = Path(str(files("tenantry.migrations")))


async def connect_server(url: str, *, database: str = "postgres", connect_timeout: float = 10.0) -> asyncpg.Connection:
    """A plain connection, as the user `url` names, to another database of its server (by default the
    `postgres` one): for what no connection to the database itself can do (create or drop it, roles)."""
    parts = make_url(url)
    return await asyncpg.connect(
        host=parts.host or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password,
        database=database,
        timeout=connect_timeout,
    )


async def ensure_database(url: str, *, connect_timeout: float = 10.0) -> bool:
    """Create the database `url` names if it is missing (connecting to the server's `postgres`
    database as the same user); True if it was created."""
    parts = make_url(url)
    name = parts.database
    if not name:
        raise ValueError(f"the URL names no database: {parts.render_as_string(hide_password=True)!r}")
    conn = await connect_server(url, connect_timeout=connect_timeout)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:  # created by someone else meanwhile
            return False
        log.info("created database %s on %s:%s", quoted, parts.host, parts.port or 5432)
        return True
    finally:
        await conn.close()


def _config(connection: Connection, app_role: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    config.attributes["app_role"] = app_role
    return config


async def migrate(
    database_url: str,
    *,
    app_role: str = "tenantry_app",
    app_password: str | None = None,
    revision: str = "head",
    downgrade: bool = False,
) -> None:
    """Upgrade (or downgrade) the database at `database_url` to `revision`.

    The application role's password is set here, from settings, rather than in
    a revision, so no secret is ever written into migration files.
    """
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:

            def run(sync_conn: Connection) -> None:
                config = _config(sync_conn, app_role)
                if downgrade:
                    command.downgrade(config, revision)
                else:
                    command.upgrade(config, revision)

            await conn.run_sync(run)
            await conn.commit()
            if app_password is not None and not downgrade:
                role = identifier(app_role)
                quoted = app_password.replace("'", "''")
                await conn.exec_driver_sql(f"ALTER ROLE {role} PASSWORD '{quoted}'")
                await conn.commit()
    finally:
        await engine.dispose()
