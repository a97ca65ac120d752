"""The trail's partitions: this month's and the next two exist before records arrive, and months past
the retention are dropped whole (each tenant's chain anchor moves to its last dropped record first).

A lifespan task on every replica, at start and every six hours; a transaction-level advisory lock makes
one replica do it at a time. It runs as the owner (`tenantry_audit_partitions`, migration 0010): the
application role cannot create or drop tables, nor delete a record.

Every schema- and database-tier tenant's copy holds a trail of its own (tier revision 2), with the same
function: each is maintained too, one at a time, in a transaction of its own. A copy that fails (its
server down, say) is logged and shown in `last_error` (`/health`), and the others go on; the next run
retries it. A tenant in the middle of a move is skipped (its records are copied whatever month they fall
in: one outside the target's partitions lands in its default partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import Database
from tenantry.db.tier_schema import AUDIT_REVISION
from tenantry.errors import TenantryError

log = logging.getLogger(__name__)

_LOCK: Final = 0x7E4A_A0D1  # pg advisory lock key of this task
_AHEAD: Final = 2
_EVERY_S: Final = 6 * 3600.0


_PARTITIONS = text("SELECT tenantry_audit_partitions(:ahead, :keep)")
# Dropping a month waits for the drains' inserts and holds up theirs while it waits: not for long.
_LOCK_TIMEOUT = text("SET LOCAL lock_timeout = '5s'")
_TIER_COPIES = text(
    "SELECT id FROM tenants WHERE placement <> 'shared' AND placement_revision >= :revision"
    " AND moving_since IS NULL ORDER BY id"
)


async def maintain(db: Database, keep_months: int, *, failed: list[str] | None = None) -> list[str]:
    """Make the coming months' partitions and drop expired ones now, in the shared tables and every tier
    copy; what was done ([] when another replica holds the lock). A tier copy's failure is logged and
    appended to `failed`; the others are still maintained."""
    params = {"ahead": _AHEAD, "keep": keep_months}
    async with db.system() as conn:
        if not (await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _LOCK})).scalar_one():
            return []
        await conn.execute(_LOCK_TIMEOUT)
        done = list((await conn.execute(_PARTITIONS, params)).scalar_one() or [])
        tiered = list((await conn.execute(_TIER_COPIES, {"revision": AUDIT_REVISION})).scalars())
        # The copies, while this replica holds the lock: one transaction each, on the copy's own tables.
        for tenant_id in tiered:
            try:
                async with db.system_data(tenant_id) as copy:
                    await copy.execute(_LOCK_TIMEOUT)
                    lines = (await copy.execute(_PARTITIONS, params)).scalar_one() or []
                done += [f"tenant {tenant_id}: {line}" for line in lines]
            except (DBAPIError, OSError, TenantryError) as exc:
                error = f"tenant {tenant_id}: {type(exc).__name__}: {exc}"[:500]
                log.warning("audit partition maintenance of a tier copy failed: %s", error)
                if failed is not None:
                    failed.append(error)
        return done


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
                failed: list[str] = []
                for line in await maintain(self._db, self._keep, failed=failed):
                    log.info("audit: %s", line)
                self.last_error = "; ".join(failed)[:1000] or None
            except (DBAPIError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("audit partition maintenance failed: %s", self.last_error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._every)

    def stop(self) -> None:
        self._stopping.set()
