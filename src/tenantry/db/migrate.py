"""Apply or roll back the alembic revisions shipped in the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from tenantry.db.rls import identifier

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


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
