"""Ledger vs Stripe, per tenant and period: what happened, what was reported, and the difference.

Periods are calendar months (UTC) of the events' `occurred_at`. `reported`
counts units in rows Stripe accepted; `pending` and `parked` are covered by
a row not yet accepted; `unreported` is covered by no row (a tenant without
a Stripe customer, or events newer than the last cycle). `difference` is
ledger minus reported: zero once everything is reported.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_RECONCILE = text(
    """
    SELECT e.tenant_id, to_char(date_trunc('month', e.occurred_at AT TIME ZONE 'UTC'), 'YYYY-MM') AS period,
           t.stripe_customer_id,
           coalesce(sum(e.units) FILTER (WHERE e.outcome = 'ok'), 0) AS ledger,
           coalesce(sum(e.units) FILTER (WHERE e.outcome = 'ok' AND r.status = 'sent'), 0) AS reported,
           coalesce(sum(e.units) FILTER (WHERE e.outcome = 'ok' AND r.status = 'pending'), 0) AS pending,
           coalesce(sum(e.units) FILTER (WHERE e.outcome = 'ok' AND r.status = 'parked'), 0) AS parked,
           coalesce(sum(e.units) FILTER (WHERE e.outcome = 'ok' AND c.event_id IS NULL), 0) AS unreported,
           count(*) FILTER (WHERE e.outcome <> 'ok') AS failed_calls
    FROM usage_events e
    JOIN tenants t ON t.id = e.tenant_id
    LEFT JOIN usage_report_events c ON c.tenant_id = e.tenant_id AND c.event_id = e.event_id
    LEFT JOIN usage_reports r ON r.tenant_id = c.tenant_id AND r.id = c.report_id
    WHERE CAST(:tenant AS uuid) IS NULL OR e.tenant_id = CAST(:tenant AS uuid)
    GROUP BY e.tenant_id, period, t.stripe_customer_id
    ORDER BY e.tenant_id, period
    """
)


async def reconcile(conn: AsyncConnection, tenant_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    rows = await conn.execute(_RECONCILE, {"tenant": tenant_id})
    out = []
    for row in rows:
        out.append(
            {
                "tenant_id": str(row.tenant_id),
                "period": row.period,
                "stripe_customer_id": row.stripe_customer_id,
                "ledger_units": int(row.ledger),
                "reported_units": int(row.reported),
                "pending_units": int(row.pending),
                "parked_units": int(row.parked),
                "unreported_units": int(row.unreported),
                "failed_calls": int(row.failed_calls),
                "difference": int(row.ledger) - int(row.reported),
                "billable": row.stripe_customer_id is not None,
            }
        )
    return out
