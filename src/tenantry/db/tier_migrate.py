"""`tenantry migrate`, second half: every schema- and database-tier tenant's copy to `tier_schema.HEAD`.

The shared tables are migrated first (alembic); then each tier copy, one tenant at a time, each in its
own transaction: a failure (a server down, a copy changed by hand) is reported for that tenant and the
others go on; running it again continues where it stopped, since a copy's revision is recorded on the
tenant row only once its upgrade committed. Until then the router refuses the tenant's calls with a
retryable `tenant_not_migrated` instead of serving them against tables it does not know.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text

from tenantry.db import tier_schema
from tenantry.db.engine import Database, note_tenant_changed
from tenantry.db.provision import create_copy

_TIERED = text(
    """
    SELECT id, placement, placement_revision FROM tenants
    WHERE placement <> 'shared' AND (CAST(:tenant AS uuid) IS NULL OR id = CAST(:tenant AS uuid))
    ORDER BY id
    """
)
_RECORD = text("UPDATE tenants SET placement_revision = :revision WHERE id = :id AND placement_revision = :was")


async def migrate_tiers(db: Database, *, tenant_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    """Upgrade every tier copy (or `tenant_id`'s) that lags; one entry per tier tenant: who is on which
    revision, and what failed."""
    async with db.system() as conn:
        rows = (await conn.execute(_TIERED, {"tenant": str(tenant_id) if tenant_id else None})).all()
    report: list[dict[str, Any]] = []
    for row in rows:
        entry: dict[str, Any] = {"tenant_id": str(row.id), "tier": row.placement, "from": row.placement_revision}
        try:
            if row.placement_revision < tier_schema.HEAD:
                db.router.forget(row.id)
                placement = await db.router.placement(row.id)
                revision = await create_copy(db.system_engine, db.router.owner_url(placement), placement, db.app_role)
                async with db.system() as conn:
                    params = {"revision": revision, "id": row.id, "was": row.placement_revision}
                    await conn.execute(_RECORD, params)
                    note_tenant_changed(conn, row.id)
            entry.update(revision=tier_schema.HEAD, status="ok")
        except Exception as exc:  # one tenant's failure is reported; the others are still migrated
            entry.update(revision=row.placement_revision, status="failed", error=f"{type(exc).__name__}: {exc}"[:300])
        report.append(entry)
    return report
