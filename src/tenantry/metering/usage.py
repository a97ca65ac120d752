"""What a tenant has used: calls and units per tool over a time range, its quota window now, and
every kind of quota as used/limit (`quotas`, see `metering/quotas.py`).

One query serves the admin (`GET /api/tenants/{id}/usage`, on the owner's
pool) and the tenant itself (the `usage_summary` tool, under RLS); both name
the tenant explicitly, so the two can never disagree.

It reads `usage_events`, so it includes calls up to the ledger drain (which
normally lags by well under a second; `/health` reports the lag).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.db.engine import Database
from tenantry.errors import BadRequest
from tenantry.metering.meter import Meter
from tenantry.metering.quotas import quota_usage
from tenantry.plans import Limits

MAX_RANGE = timedelta(days=366)

_BY_TOOL = text(
    """
    SELECT tool,
           count(*) AS calls,
           count(*) FILTER (WHERE outcome = 'ok') AS ok_calls,
           coalesce(sum(units), 0) AS units,
           coalesce(sum(units) FILTER (WHERE outcome = 'ok'), 0) AS billable_units,
           count(*) FILTER (WHERE NOT metered) AS unmetered_calls
    FROM usage_events
    WHERE tenant_id = :tenant_id AND occurred_at >= :since AND occurred_at < :until
    GROUP BY tool
    ORDER BY tool
    """
)


def time_range(
    since: datetime | None, until: datetime | None, *, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """A checked [since, until) range; the default is the last 24 hours."""
    now = now or datetime.now(UTC)
    until = _aware(until) if until is not None else now
    since = _aware(since) if since is not None else until - timedelta(days=1)
    if since >= until:
        raise BadRequest("'since' must be before 'until'", code="invalid_range")
    if until - since > MAX_RANGE:
        raise BadRequest(f"a range may span at most {MAX_RANGE.days} days", code="invalid_range")
    return since, until


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def summarize(
    conn: AsyncConnection,
    meter: Meter,
    tenant_id: uuid.UUID,
    limits: Limits,
    since: datetime,
    until: datetime,
    *,
    db: Database,
    tool_counts: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The usage report; `tool_counts` is the catalog's (exposed, offered) tool count for `quotas.max_tools`."""
    rows = (await conn.execute(_BY_TOOL, {"tenant_id": tenant_id, "since": since, "until": until})).all()
    tools = {
        row.tool: {
            "calls": row.calls,
            "ok_calls": row.ok_calls,
            "units": row.units,
            "billable_units": row.billable_units,
            "unmetered_calls": row.unmetered_calls,
        }
        for row in rows
    }
    return {
        "tenant_id": str(tenant_id),
        "since": since.isoformat(),
        "until": until.isoformat(),
        "totals": {
            key: sum(tool[key] for tool in tools.values())
            for key in ("calls", "ok_calls", "units", "billable_units", "unmetered_calls")
        },
        "tools": tools,
        "quota": dict(await meter.usage(tenant_id, limits)),
        "quotas": await quota_usage(conn, meter, tenant_id, limits, db=db, tools=tool_counts),
    }
