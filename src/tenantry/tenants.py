"""A tenant's lifecycle: every write of its status, plan and limits, and who hears of it.

Provisioning (onboarding), activation, changes by an admin, dunning's
restriction or suspension and its lifting, a subscription's plan, and
deprovisioning all write the tenant row here and nowhere else. They run in a
system transaction handed in by the caller (REST, CLI, billing): cross-tenant
by nature. Deleting is soft: the row stays (billing and audit keep referring
to it) with status `deprovisioned`, `deleted_at` set and every key revoked.

Who hears of a change: every process caches what a credential resolves to
(tenant, status, plan, limits; `auth/resolver.py`). Each write here notes the
tenant on its transaction (`db.engine.note_tenant_changed`), so this process
forgets it at commit; and triggers (migration 0007) announce the same change
on `CHANNEL` at commit, so every other replica forgets it within about a
second (`watch`), whoever made the change: this module, the CLI, SQL by hand.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.auth.api_keys import revoke_all_keys
from tenantry.db.engine import Database, note_tenant_changed
from tenantry.db.listener import ChangeListener, Subscription
from tenantry.db.models import tenants
from tenantry.errors import Conflict, NotFound
from tenantry.tenancy import TenantStatus

# The channel migration 0007's triggers notify with a tenant id when its status, plan, limits or keys change.
CHANNEL = "tenantry_tenant_changes"

Forget = Callable[[uuid.UUID | None], None]


def watch(db: Database, listener: ChangeListener, *caches: Forget) -> None:
    """Make each `forget(tenant_id)` of `caches` run in this process after every change of a tenant,
    made here (at commit) or anywhere else (announced on `CHANNEL`); `forget(None)` when announcements
    may have been missed (the listener reconnected)."""

    def forget(tenant_id: uuid.UUID | None) -> None:
        for cache in caches:
            cache(tenant_id)

    def notified(payload: str) -> None:
        tenant_id = uuid.UUID(payload)
        db.router.forget(tenant_id)  # where its data plane is (a move's switch is a change of the row)
        forget(tenant_id)

    def reconnected() -> None:
        db.router.forget(None)
        forget(None)

    db.on_tenant_changed = forget
    listener.subscribe(Subscription(CHANNEL, notified, reconnected))


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
    tier: str | None  # the tier an admin set (None: the plan's)
    placement: str  # the tier its data is on now

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
            "tier": self.placement,
            "tier_override": self.tier,
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
    tenants.c.tier,
    tenants.c.placement,
)


async def create_tenant(
    conn: AsyncConnection,
    name: str,
    plan: str = "free",
    *,
    status: TenantStatus = TenantStatus.ACTIVE,
    tier: str | None = None,
) -> Tenant:
    """A new tenant, on the shared tier until `tiers.place_tenant` provisions the one it should be on."""
    row = (
        await conn.execute(
            insert(tenants).values(id=uuid.uuid4(), name=name, plan=plan, status=status, tier=tier).returning(*_COLUMNS)
        )
    ).one()
    return Tenant(**row._mapping)


async def get_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> Tenant:
    row = (await conn.execute(select(*_COLUMNS).where(tenants.c.id == tenant_id))).one_or_none()
    if row is None:
        raise NotFound(f"no tenant {tenant_id}", code="tenant_not_found")
    return Tenant(**row._mapping)


async def list_tenants(
    conn: AsyncConnection, *, status: str | None = None, name: str | None = None, limit: int = 100, offset: int = 0
) -> list[Tenant]:
    query = select(*_COLUMNS).order_by(tenants.c.created_at, tenants.c.id).limit(limit).offset(offset)
    if status is not None:
        query = query.where(tenants.c.status == status)
    if name is not None:
        query = query.where(tenants.c.name == name)
    return [Tenant(**row._mapping) for row in await conn.execute(query)]


async def update_tenant(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    *,
    name: str | None = None,
    plan: str | None = None,
    status: TenantStatus | None = None,
    limits: dict[str, Any] | None = None,
    tier: str | None = None,
) -> Tenant:
    """Change what is given; `limits` replaces the tenant's overrides of its plan's limits; `tier` is the
    tier the tenant should be on (`tiers.move_tenant` puts it there)."""
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
    if tier is not None:
        values["tier"] = tier
    row = (
        await conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(**values).returning(*_COLUMNS))
    ).one()
    note_tenant_changed(conn, tenant_id)
    return Tenant(**row._mapping)


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
    note_tenant_changed(conn, tenant_id)
    return Tenant(**row._mapping)


# --- provisioning (billing/onboarding.py) ----------------------------------------------------------


async def provision_tenant(
    conn: AsyncConnection, tenant_id: uuid.UUID, *, name: str, plan: str, checkout_session_id: str
) -> None:
    """The row of a tenant being onboarded, status `provisioning`; a second call changes nothing."""
    await conn.execute(
        pg_insert(tenants)
        .values(
            id=tenant_id,
            name=name,
            plan=plan,
            status=TenantStatus.PROVISIONING,
            checkout_session_id=checkout_session_id,
        )
        .on_conflict_do_nothing()
    )


async def configure_provisioning(conn: AsyncConnection, tenant_id: uuid.UUID, plan: str) -> None:
    """A provisioning tenant's plan and default limits; the plan only if no subscription event set one."""
    still = (tenants.c.id == tenant_id, tenants.c.status == TenantStatus.PROVISIONING)
    await conn.execute(update(tenants).where(*still).values(limits={}, updated_at=func.now()))
    await conn.execute(update(tenants).where(*still, tenants.c.subscription_event_at.is_(None)).values(plan=plan))
    note_tenant_changed(conn, tenant_id)


async def activate_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    """Provisioning -> active, once its canary passed."""
    await conn.execute(
        update(tenants)
        .where(tenants.c.id == tenant_id, tenants.c.status == TenantStatus.PROVISIONING)
        .values(status=TenantStatus.ACTIVE, canary_passed_at=func.now(), updated_at=func.now())
    )
    note_tenant_changed(conn, tenant_id)


# --- billing (billing/events.py, billing/dunning.py) ----------------------------------------------


async def set_subscribed_plan(conn: AsyncConnection, tenant_id: uuid.UUID, plan: str, *, restricted: bool) -> None:
    """The plan a subscription pays for; a tenant restricted by dunning gets it back when it pays."""
    column = "plan_before_restriction" if restricted else "plan"
    await conn.execute(update(tenants).where(tenants.c.id == tenant_id).values({column: plan}))
    note_tenant_changed(conn, tenant_id)


_RESTRICT = text(
    """
    UPDATE tenants SET plan_before_restriction = plan, plan = :plan, updated_at = now()
    WHERE past_due_since IS NOT NULL AND past_due_since <= :cutoff
      AND plan_before_restriction IS NULL AND status = 'active' AND deleted_at IS NULL
    RETURNING id
    """
)
_SUSPEND = text(
    """
    UPDATE tenants SET plan_before_restriction = plan, status = 'suspended', updated_at = now()
    WHERE past_due_since IS NOT NULL AND past_due_since <= :cutoff
      AND plan_before_restriction IS NULL AND status = 'active' AND deleted_at IS NULL
    RETURNING id
    """
)
_RESTORE = text(
    """
    UPDATE tenants SET
        plan = coalesce(plan_before_restriction, plan),
        status = CASE WHEN plan_before_restriction IS NOT NULL AND status = 'suspended' THEN 'active' ELSE status END,
        plan_before_restriction = NULL, past_due_since = NULL,
        subscription_status = CASE WHEN subscription_status = 'past_due' THEN 'active' ELSE subscription_status END,
        updated_at = now()
    WHERE id = :tenant_id AND status <> 'deprovisioned'
    """
)


async def restrict_past_due(conn: AsyncConnection, cutoff: datetime, *, plan: str | None) -> list[uuid.UUID]:
    """Tenants past due since before `cutoff` and not yet restricted: moved to `plan`, or suspended
    when `plan` is None. The plan they had is kept (`plan_before_restriction`), which also marks the
    change as dunning's. Returns the tenants changed."""
    if plan is None:
        rows = await conn.execute(_SUSPEND, {"cutoff": cutoff})
    else:
        rows = await conn.execute(_RESTRICT, {"cutoff": cutoff, "plan": plan})
    changed = [row.id for row in rows]
    for tenant_id in changed:
        note_tenant_changed(conn, tenant_id)
    return changed


async def lift_restriction(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    """Undo exactly what `restrict_past_due` did to the tenant (nothing an operator did), and end its
    past-due state."""
    await conn.execute(_RESTORE, {"tenant_id": tenant_id})
    note_tenant_changed(conn, tenant_id)
