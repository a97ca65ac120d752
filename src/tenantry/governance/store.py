"""Policy documents in PostgreSQL, and each process's compiled copy of them.

One row per tenant (`tenant_policies`, forced RLS), versioned: every write
bumps `version`, and a writer may say which version it edited (409 when
another change came first). A write notes the tenant on its transaction, so
this process forgets the compiled policy at commit; the table's trigger
announces it on `tenantry_tenant_changes`, so every other replica does within
about a second (`tenants.watch`).

`Policies` holds the compiled policy of each tenant that called, or the fact
that it has none (then the tenant behaves as before policies existed: every
tool, any arguments). It reads through the tenant's own RLS-bound connection.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.db.engine import CONTROL, Database, note_tenant_changed
from tenantry.db.models import tenant_policies
from tenantry.errors import Conflict, NotFound
from tenantry.governance.policy import Policy, parse_document

_MAX_TENANTS: Final = 100_000


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    tenant_id: uuid.UUID
    version: int
    document: dict[str, Any]
    updated_at: datetime

    def public(self) -> dict[str, Any]:
        return {
            "tenant_id": str(self.tenant_id),
            "version": self.version,
            "document": self.document,
            "updated_at": self.updated_at.isoformat(),
        }


_COLUMNS = (
    tenant_policies.c.tenant_id,
    tenant_policies.c.version,
    tenant_policies.c.document,
    tenant_policies.c.updated_at,
)


async def get_policy(conn: AsyncConnection, tenant_id: uuid.UUID) -> StoredPolicy | None:
    row = (await conn.execute(select(*_COLUMNS).where(tenant_policies.c.tenant_id == tenant_id))).one_or_none()
    return None if row is None else StoredPolicy(*row)


async def put_policy(
    conn: AsyncConnection, tenant_id: uuid.UUID, raw: Any, *, expected_version: int | None = None
) -> StoredPolicy:
    """Validate `raw` (400 `invalid_policy`, naming the bad rule) and store it as the next version."""
    document = parse_document(raw).model_dump(mode="json", exclude_defaults=True)
    current = await get_policy(conn, tenant_id)
    if expected_version is not None and (current.version if current else 0) != expected_version:
        found = current.version if current else 0
        raise Conflict(f"the policy is at version {found}, not {expected_version}", code="policy_version_conflict")
    if current is None:
        statement: Any = insert(tenant_policies).values(tenant_id=tenant_id, version=1, document=document)
        statement = statement.on_conflict_do_nothing()
    else:
        statement = (
            update(tenant_policies)
            .where(tenant_policies.c.tenant_id == tenant_id, tenant_policies.c.version == current.version)
            .values(version=current.version + 1, document=document, updated_at=func.now())
        )
    row = (await conn.execute(statement.returning(*_COLUMNS))).one_or_none()
    if row is None:
        raise Conflict("the policy changed while this change was made; retry", code="policy_version_conflict")
    note_tenant_changed(conn, tenant_id)
    return StoredPolicy(*row)


async def delete_policy(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    result = await conn.execute(delete(tenant_policies).where(tenant_policies.c.tenant_id == tenant_id))
    if not result.rowcount:
        raise NotFound(f"tenant {tenant_id} has no policy", code="policy_not_found")
    note_tenant_changed(conn, tenant_id)


class Policies:
    """Each tenant's compiled policy (or none), read once and kept until the tenant changes."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: OrderedDict[uuid.UUID, Policy | None] = OrderedDict()
        self._generation = 0

    def forget(self, tenant_id: uuid.UUID | None = None) -> None:
        self._generation += 1
        if tenant_id is None:
            self._cache.clear()
        else:
            self._cache.pop(tenant_id, None)

    async def for_tenant(self, tenant_id: uuid.UUID) -> Policy | None:
        try:
            return self._cache[tenant_id]
        except KeyError:
            pass
        generation = self._generation
        async with self._db.tenant(tenant_id, plane=CONTROL) as conn:
            stored = await get_policy(conn, tenant_id)
        policy = None if stored is None else Policy(parse_document(stored.document), stored.version)
        if generation == self._generation:  # no change was announced while this was read
            self._cache[tenant_id] = policy
            if len(self._cache) > _MAX_TENANTS:
                self._cache.popitem(last=False)
        return policy
