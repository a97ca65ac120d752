"""What an unpaid invoice does to a tenant: a grace period, then the configured policy.

`invoice.payment_failed` marks the tenant past due (`past_due_since`); it keeps
its plan during `billing_past_due_grace_seconds`. After that,
`enforce_past_due` (run by the reporter each cycle, and by
`tenantry billing report --once`) applies `billing_past_due_policy`:
`restrict` moves it to `billing_past_due_plan`, `suspend` suspends it. The plan
it had is kept in `plan_before_restriction`, which also marks the change as
made by dunning, so `invoice.paid` restores exactly what dunning changed and
nothing an operator did.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.settings import Settings

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
_MARK_PAST_DUE = text(
    """
    UPDATE tenants SET past_due_since = coalesce(past_due_since, :at), subscription_status = 'past_due',
                       updated_at = now()
    WHERE id = :tenant_id
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


async def mark_past_due(conn: AsyncConnection, tenant_id: uuid.UUID, at: datetime) -> None:
    await conn.execute(_MARK_PAST_DUE, {"tenant_id": tenant_id, "at": at})


async def restore_paid(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    await conn.execute(_RESTORE, {"tenant_id": tenant_id})


async def enforce_past_due(conn: AsyncConnection, settings: Settings, now: datetime) -> list[uuid.UUID]:
    """Apply the policy to tenants whose grace period ended; return the tenants changed."""
    cutoff = now - timedelta(seconds=settings.billing_past_due_grace_seconds)
    if settings.billing_past_due_policy == "suspend":
        rows = await conn.execute(_SUSPEND, {"cutoff": cutoff})
    else:
        rows = await conn.execute(_RESTRICT, {"cutoff": cutoff, "plan": settings.billing_past_due_plan})
    return [row.id for row in rows]
