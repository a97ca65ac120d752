"""Tenant lifecycle: create, read, list, change, deprovision.

These run in a system transaction handed in by the caller (REST or CLI):
they are cross-tenant by nature. Deleting is soft: the row stays (billing
and audit keep referring to it) with status `deprovisioned`, `deleted_at`
set and every key revoked.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.auth.api_keys import revoke_all_keys
from tenantry.db.models import tenants
from tenantry.errors import Conflict, NotFound
from tenantry.tenancy import TenantStatus


@dataclass(frozen=True, slots=True)
class Tenant:
    id: uuid.UUID
    name: str
    plan: str
    status: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    limits: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "plan": self.plan,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "deleted_at": self.deleted_at.isoformat() if self.deleted_at else None,
            "limits": self.limits,
        }


# Named, not `tuple(tenants.c)`: billing adds columns this record does not carry.
_COLUMNS = (
    tenants.c.id,
    tenants.c.name,
    tenants.c.plan,
    tenants.c.status,
    tenants.c.created_at,
    tenants.c.updated_at,
    tenants.c.deleted_at,
    tenants.c.limits,
)


async def create_tenant(
    conn: AsyncConnection, name: str, plan: str = "free", *, status: TenantStatus = TenantStatus.ACTIVE
) -> Tenant:
    row = (
        await conn.execute(
            insert(tenants).values(id=uuid.uuid4(), name=name, plan=plan, status=status).returning(*_COLUMNS)
        )
    ).one()
    return Tenant(*row)


async def get_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> Tenant:
    row = (await conn.execute(select(*_COLUMNS).where(tenants.c.id == tenant_id))).one_or_none()
    if row is None:
        raise NotFound(f"no tenant {tenant_id}", code="tenant_not_found")
    return Tenant(*row)


async def list_tenants(
    conn: AsyncConnection, *, status: str | None = None, limit: int = 100, offset: int = 0
) -> list[Tenant]:
    query = select(*_COLUMNS).order_by(tenants.c.created_at, tenants.c.id).limit(limit).offset(offset)
    if status is not None:
        query = query.where(tenants.c.status == status)
    return [Tenant(*row) for row in await conn.execute(query)]


async def update_tenant(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    *,
    name: str | None = None,
    plan: str | None = None,
    status: TenantStatus | None = None,
    limits: dict[str, Any] | None = None,
) -> Tenant:
    """Change what is given; `limits` replaces the tenant's overrides of its plan's limits."""
    current = await get_tenant(conn, tenant_id)
    if current.status == TenantStatus.DEPROVISIONED:
        raise Conflict("a deprovisioned tenant cannot be changed", code="tenant_deprovisioned")
    if status == TenantStatus.DEPROVISIONED:
        raise Conflict("use DELETE to deprovision a tenant", code="invalid_status")
    values: dict[str, Any] = {"updated_at": func.now()}
    if name is not None:
        values["name"] = name
    if plan is not None:
        values["plan"] = plan
    if status is not None:
        values["status"] = status
    if limits is not None:
        values["limits"] = limits
    row = (
        await conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(**values).returning(*_COLUMNS))
    ).one()
    return Tenant(*row)


async def deprovision_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> Tenant:
    """Soft-delete: revoke every key, mark deprovisioned. Repeating it changes nothing."""
    current = await get_tenant(conn, tenant_id)
    if current.status == TenantStatus.DEPROVISIONED:
        return current
    await revoke_all_keys(conn, tenant_id)
    row = (
        await conn.execute(
            update(tenants)
            .where(tenants.c.id == tenant_id)
            .values(status=TenantStatus.DEPROVISIONED, deleted_at=func.now(), updated_at=func.now())
            .returning(*_COLUMNS)
        )
    ).one()
    return Tenant(*row)
