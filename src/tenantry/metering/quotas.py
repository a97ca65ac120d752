"""Every kind of quota of a tenant as used/limit, as the usage API, `usage_summary` and `/health` show it.

Each kind is read where it is enforced: the meter's windows (calls, reads,
requests per minute) from Redis in one round trip; stored bytes and keys
from the tenant's `tenant_storage` row (kept exact by a trigger, migration
0011), read on the tenant's data plane wherever its tier puts it;
upstreams by counting the tenant's rows; tools from the catalog
(`gateway/catalog.py`), which the caller passes in, since the catalog lives
above this floor. `limit` is None where the plan sets no limit; `used` is
None where nothing counts it: a meter window with no limit is not counted,
and the tool count is None when the caller had no catalog to ask.

Being at (or over) a limit is the tenant's state, not a fault of the
gateway: `at_limit` lists such kinds, and `/health?tenant=` reports them
without degrading (see `api/health.py`).
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.db.engine import Database
from tenantry.metering.meter import Meter
from tenantry.plans import Limits

KINDS: Final = (
    "calls_per_window",
    "reads_per_window",
    "requests_per_minute",
    "storage_bytes",
    "storage_keys",
    "max_upstreams",
    "max_tools",
)

# Named explicitly: the same statement serves the owner's connection (admin, health) and the tenant's own.
_UPSTREAMS = text("SELECT count(*) FROM upstreams WHERE tenant_id = :tenant_id")
_STORED = text(
    """
    SELECT coalesce((SELECT bytes FROM tenant_storage WHERE tenant_id = :tenant_id), 0) AS bytes,
           coalesce((SELECT keys FROM tenant_storage WHERE tenant_id = :tenant_id), 0) AS keys
    """
)


async def storage_held(db: Database, tenant_id: uuid.UUID) -> tuple[int, int]:
    """(bytes, keys) the tenant stores, read on its data plane (its tier's tables, under RLS)."""
    async with db.tenant(tenant_id) as conn:
        row = (await conn.execute(_STORED, {"tenant_id": tenant_id})).one()
    return int(row.bytes), int(row.keys)


async def quota_usage(
    conn: AsyncConnection,
    meter: Meter,
    tenant_id: uuid.UUID,
    limits: Limits,
    *,
    db: Database,
    tools: tuple[int, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """{kind: {"used", "limit", ...}} for every kind in `KINDS`. `tools` is the catalog's (exposed,
    offered) count. Raises `Unavailable` (`meter_unavailable`) when Redis is unreachable and a meter
    window is limited."""
    windows = await meter.windows(tenant_id, limits)
    upstreams = (await conn.execute(_UPSTREAMS, {"tenant_id": tenant_id})).scalar_one()
    stored_bytes, stored_keys = await storage_held(db, tenant_id)
    found: dict[str, dict[str, Any]] = {}
    for kind, window in (
        ("calls_per_window", "calls"),
        ("reads_per_window", "reads"),
        ("requests_per_minute", "requests"),
    ):
        usage = windows[window]
        found[kind] = {
            "used": usage["used"],
            "limit": usage["limit"],
            "remaining": usage["remaining"],
            "window_seconds": usage["window_seconds"],
            "resets_in_ms": usage["resets_in_ms"],
        }
    found["storage_bytes"] = {"used": stored_bytes, "limit": limits.storage_bytes}
    found["storage_keys"] = {"used": stored_keys, "limit": limits.storage_keys}
    found["max_upstreams"] = {"used": int(upstreams), "limit": limits.max_upstreams}
    exposed, offered = tools if tools is not None else (None, None)
    found["max_tools"] = {"used": exposed, "limit": limits.max_tools, "offered": offered}
    return found


def at_limit(quotas: dict[str, dict[str, Any]]) -> list[str]:
    """The kinds whose next unit would be refused (or that are past a lowered limit)."""
    full = []
    for kind, quota in quotas.items():
        used, limit = quota.get("used"), quota.get("limit")
        if used is not None and limit is not None and used >= limit:
            full.append(kind)
    return full
