"""What an unpaid invoice does to a tenant: a grace period, then the configured policy.

`invoice.payment_failed` marks the tenant past due (`past_due_since`); it keeps
its plan during `billing_past_due_grace_seconds`. After that,
`enforce_past_due` (run by the reporter each cycle, and by
`tenantry billing report --once`) applies `billing_past_due_policy`:
`restrict` moves it to `billing_past_due_plan`, `suspend` suspends it. The plan
it had is kept in `plan_before_restriction`, which also marks the change as
made by dunning, so `invoice.paid` restores exactly what dunning changed and
nothing an operator did. The tenant row is written by `tenants.py`, which
owns every change of a tenant's plan and status.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry import tenants as tenant_lifecycle
from tenantry.settings import Settings

_MARK_PAST_DUE = text(
    """
    UPDATE tenants SET past_due_since = coalesce(past_due_since, :at), subscription_status = 'past_due',
                       updated_at = now()
    WHERE id = :tenant_id
    """
)


async def mark_past_due(conn: AsyncConnection, tenant_id: uuid.UUID, at: datetime) -> None:
    await conn.execute(_MARK_PAST_DUE, {"tenant_id": tenant_id, "at": at})


async def restore_paid(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    await tenant_lifecycle.lift_restriction(conn, tenant_id)


async def enforce_past_due(conn: AsyncConnection, settings: Settings, now: datetime) -> list[uuid.UUID]:
    """Apply the policy to tenants whose grace period ended; return the tenants changed."""
    cutoff = now - timedelta(seconds=settings.billing_past_due_grace_seconds)
    suspend = settings.billing_past_due_policy == "suspend"
    return await tenant_lifecycle.restrict_past_due(
        conn, cutoff, plan=None if suspend else settings.billing_past_due_plan
    )
