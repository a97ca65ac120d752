"""`health_check`: the tenant canary, answered by the database itself.

It reports the tenant the database sees bound to this transaction and the
role it runs as, so a caller (and onboarding) can prove the whole path from
credential to RLS binds the right tenant.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from tenantry.db.engine import CONTROL
from tenantry.errors import Unavailable
from tenantry.tools.base import Arguments, BuiltinTool, ToolContext

_CANARY = text(
    """
    SELECT current_setting('tenantry.tenant_id', true) AS bound_tenant,
           current_user AS db_role,
           (SELECT count(*) FROM tenant_data) AS keys_stored
    """
)
_TENANTS_VISIBLE = text("SELECT count(*) FROM tenants")


class NoArgs(Arguments):
    pass


async def health_check(ctx: ToolContext, args: NoArgs) -> dict[str, Any]:
    # The data plane (wherever the tenant's tier puts it) and the shared control plane, each under RLS.
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        row = (await conn.execute(_CANARY)).one()
    async with ctx.db.tenant(ctx.tenant_id, plane=CONTROL) as conn:
        tenants_visible = (await conn.execute(_TENANTS_VISIBLE)).scalar_one()
    ok = row.bound_tenant == str(ctx.tenant_id) and tenants_visible == 1
    if not ok:
        raise Unavailable("the database does not see this tenant bound", code="canary_failed")
    return {
        "status": "ok",
        "tenant_id": row.bound_tenant,
        "database_role": row.db_role,
        "keys_stored": row.keys_stored,
    }


TOOL = BuiltinTool(
    name="health_check",
    title="Check the gateway",
    description=(
        "Check that the gateway and its database are working for this tenant. Returns the tenant id "
        "the database sees and how many keys this tenant has stored. Takes no arguments."
    ),
    arguments=NoArgs,
    run=health_check,
    read_only=True,
)
