"""Admin REST: a tenant's isolation tier (where its data plane is), moves between tiers, and cleanup.

`POST /api/tenants/{id}/move` runs the whole move (`tiers.move_tenant`) and answers when the router has
switched: what was copied and the per-table verification. The old copy stays until
`POST /api/tenants/{id}/cleanup`. While a move runs, the tenant's calls get a retryable 503
(`tenant_moving`, Retry-After).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from tenantry import tier_moves, tiers
from tenantry.api.admin import DatabaseUrl, Tier
from tenantry.api.deps import AdminDep, ServicesDep
from tenantry.api.fields import Strict
from tenantry.api.openapi import errors
from tenantry.audit.changes import note_change
from tenantry.db.provision import check_database_url
from tenantry.tenancy import parse_tenant_id

router = APIRouter(prefix="/api", responses=errors(400, 401, 404, 409, 503))


class Move(Strict):
    tier: Tier
    database_url: DatabaseUrl | None = Field(
        None, description="Database tier only: the tenant's database on another server (its password is sealed)."
    )


@router.get("/tenants/{tenant_id}/tier", dependencies=[AdminDep])
async def get_tier(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    """Where the tenant's data plane is now, the tier its override or plan asks for, and (`plan_move`) the
    move a Stripe plan change made due: pending, or retrying with its attempts and last error."""
    tid = parse_tenant_id(tenant_id)
    found = await tiers.describe(services.db, services.settings, tid)
    return {**found, "plan_move": await tier_moves.pending(services.db, services.settings, tid)}


@router.post("/tenants/{tenant_id}/move", dependencies=[AdminDep])
async def move(tenant_id: str, body: Move, services: ServicesDep) -> dict[str, Any]:
    tid = parse_tenant_id(tenant_id)
    before = await tiers.describe(services.db, services.settings, tid)
    check_database_url(body.tier, body.database_url)
    result = await tiers.move_tenant(services.db, services.settings, tid, body.tier, database_url=body.database_url)
    note_change(tid, "tenant.move", tid, before, await tiers.describe(services.db, services.settings, tid))
    return result


@router.post("/tenants/{tenant_id}/cleanup", dependencies=[AdminDep])
async def cleanup(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    """Delete the copy the last move left behind."""
    tid = parse_tenant_id(tenant_id)
    result = await tiers.cleanup_tenant(services.db, services.settings, tid)
    note_change(tid, "tenant.tier_cleanup", tid, None, result)
    return result
