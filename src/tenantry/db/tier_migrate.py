"""`tenantry migrate`, second half: every schema- and database-tier tenant's copy to `tier_schema.HEAD`.

The shared tables are migrated first (alembic); then each tier copy, one tenant at a time, each in its
own transaction: a failure (a server down, a copy changed by hand) is reported for that tenant and the
others go on; running it again continues where it stopped, since a copy's revision is recorded on the
tenant row only once its upgrade committed. Until then the router refuses the tenant's calls with a
retryable `tenant_not_migrated` instead of serving them against tables it does not know.

Revision 2 moves the tenant's audit trail into its copy: the records it left in the shared trail until
then are copied in with the tables, in their transaction (`provision.adopt_trail`), and removed from
the shared tables in the transaction that records the revision, so the trail is in exactly one place
whatever fails in between (until the revision is recorded, the copy's is not read, and its new records
wait in the ledger's stream).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from tenantry.db import tier_schema
from tenantry.db.engine import Database, note_tenant_changed
from tenantry.db.provision import TRAIL, create_copy, empty
from tenantry.secrets import SecretBox

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
                owner_url = db.router.owner_url(placement)
                revision = await create_copy(db.system_engine, owner_url, placement, db.app_role, tenant_id=row.id)
                async with db.system() as conn:
                    params = {"revision": revision, "id": row.id, "was": row.placement_revision}
                    recorded = (await conn.execute(_RECORD, params)).rowcount
                    if recorded and row.placement_revision < tier_schema.AUDIT_REVISION:
                        await empty(conn, row.id, TRAIL)  # adopted by the copy, in its upgrade
                    note_tenant_changed(conn, row.id)
            entry.update(revision=tier_schema.HEAD, status="ok")
        except Exception as exc:  # one tenant's failure is reported; the others are still migrated
            entry.update(revision=row.placement_revision, status="failed", error=f"{type(exc).__name__}: {exc}"[:300])
        report.append(entry)
    return report


_REMOTE = text(
    """
    SELECT id, placement_url, placement_secret FROM tenants
    WHERE placement_url IS NOT NULL AND (CAST(:tenant AS uuid) IS NULL OR id = CAST(:tenant AS uuid))
    ORDER BY id FOR UPDATE
    """
)
_SEAL = text("UPDATE tenants SET placement_url = :url, placement_secret = :sealed WHERE id = :id")


async def seal_clear_passwords(db: Database, secrets: SecretBox, *, tenant_id: uuid.UUID | None = None) -> list[str]:
    """Database-tier tenants placed on another server before its owner password was sealed kept it in
    clear in `tenants.placement_url` (`URL.set(password=None)` keeps a password): seal it into
    `placement_secret`, as a move does now, and take it out of the URL. The router reaches the same
    server with the same password either way. Returns the tenants sealed; a repeat seals nothing."""
    done: list[str] = []
    async with db.system() as conn:
        for row in (await conn.execute(_REMOTE, {"tenant": str(tenant_id) if tenant_id else None})).all():
            url = make_url(row.placement_url)
            if url.password is None:
                continue
            secret = secrets.open(row.placement_secret) if row.placement_secret else {}
            secret["password"] = secret.get("password") or str(url.password)
            bare = url._replace(password=None).render_as_string(hide_password=False)
            await conn.execute(_SEAL, {"id": row.id, "url": bare, "sealed": secrets.seal(secret)})
            note_tenant_changed(conn, row.id)
            done.append(str(row.id))
    return done
