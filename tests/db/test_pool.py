"""The application pool: what `/health` reports about it, against the real PostgreSQL."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from tenantry.db.engine import Database
from tenantry.settings import Settings


async def opened_after_rounds(settings: Settings, pool_size: int, rounds: int = 3) -> int:
    """Connections the app pool opened for `rounds` rounds of two concurrent transactions."""
    db = Database(settings.model_copy(update={"db_pool_size": pool_size, "db_max_overflow": 2}))
    try:

        async def hold() -> None:
            async with db.unbound() as conn:
                await conn.execute(text("SELECT pg_sleep(0.02)"))

        for _ in range(rounds):
            await asyncio.gather(hold(), hold())
        status = db.pool_status()
        assert status["checked_out"] == 0
        return int(status["opened"])
    finally:
        await db.dispose()


async def test_a_pool_smaller_than_the_concurrency_opens_a_connection_per_round(settings: Settings) -> None:
    # One kept connection, and an overflow one opened (and closed on return) in every round.
    assert await opened_after_rounds(settings, pool_size=1) == 1 + 3


async def test_a_pool_sized_for_the_concurrency_opens_each_connection_once(settings: Settings) -> None:
    assert await opened_after_rounds(settings, pool_size=2) == 2
