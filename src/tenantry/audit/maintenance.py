"""The trail's partitions: this month's and the next two exist before records arrive, and months past
the retention are dropped whole (each tenant's chain anchor moves to its last dropped record first).

A lifespan task on every replica, at start and every six hours; a transaction-level advisory lock makes
one replica do it at a time. It runs as the owner (`tenantry_audit_partitions`, migration 0010): the
application role cannot create or drop tables, nor delete a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import Database

log = logging.getLogger(__name__)

_LOCK: Final = 0x7E4A_A0D1  # pg advisory lock key of this task
_AHEAD: Final = 2
_EVERY_S: Final = 6 * 3600.0


async def maintain(db: Database, keep_months: int) -> list[str]:
    """Make the coming months' partitions and drop expired ones now; what was done ([] when another
    replica holds the lock)."""
    async with db.system() as conn:
        if not (await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _LOCK})).scalar_one():
            return []
        # Dropping a month waits for the drains' inserts and holds up theirs while it waits: not for long.
        await conn.execute(text("SET LOCAL lock_timeout = '5s'"))
        done = await conn.execute(
            text("SELECT tenantry_audit_partitions(:ahead, :keep)"), {"ahead": _AHEAD, "keep": keep_months}
        )
        return list(done.scalar_one() or [])


class AuditMaintenance:
    def __init__(self, db: Database, keep_months: int, *, every_s: float = _EVERY_S) -> None:
        self._db = db
        self._keep = keep_months
        self._every = every_s
        self._stopping = asyncio.Event()
        self.last_error: str | None = None

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                for line in await maintain(self._db, self._keep):
                    log.info("audit: %s", line)
                self.last_error = None
            except (DBAPIError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("audit partition maintenance failed: %s", self.last_error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._every)

    def stop(self) -> None:
        self._stopping.set()
