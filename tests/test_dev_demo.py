"""`tenantry dev`'s demo tenant (plan `pro`) is on its plan's tier, as `POST /api/tenants` would put it."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import text

from tenantry.cli import _demo_tenant
from tenantry.db.engine import Database
from tenantry.settings import Settings


async def _rows_and_tier(settings: Settings, tenant_id: uuid.UUID, write: str | None = None) -> tuple[list[str], str]:
    db = Database(settings)
    try:
        async with db.tenant(tenant_id) as conn:
            if write is not None:
                await conn.execute(
                    text(
                        "INSERT INTO tenant_data (tenant_id, key, value, size_bytes) VALUES (:t, :k, '1', 1)"
                        " ON CONFLICT DO NOTHING"
                    ),
                    {"t": tenant_id, "k": write},
                )
            keys = list((await conn.execute(text("SELECT key FROM tenant_data ORDER BY key"))).scalars())
        async with db.system() as conn:
            retired = (
                await conn.execute(text("SELECT retired_placement FROM tenants WHERE id = :t"), {"t": tenant_id})
            ).scalar_one()
        assert retired is None  # no old copy left for an operator to clean up
        return keys, (await db.router.placement(tenant_id)).tier
    finally:
        await db.dispose()


def test_the_demo_tenant_is_on_its_plans_tier_and_a_shared_one_from_an_older_run_is_moved_with_its_data(
    settings: Settings,
) -> None:
    # A run before tiers (or with every plan shared) left the demo tenant on the shared tier, with data.
    shared = settings.model_copy(update={"plan_tiers": {}})
    tenant, key_id, secret, _ = asyncio.run(_demo_tenant(shared, None))
    assert tenant.placement == "shared"
    keys, _ = asyncio.run(_rows_and_tier(shared, tenant.id, write="greeting"))
    assert "greeting" in keys

    pro_on_schema = settings.model_copy(update={"plan_tiers": {"pro": "schema"}})
    moved, kept_key, kept_secret, reused = asyncio.run(_demo_tenant(pro_on_schema, (tenant.id, key_id, secret)))
    assert (moved.id, moved.plan, moved.placement) == (tenant.id, "pro", "schema")
    assert (kept_key, kept_secret, reused) == (key_id, secret, True)
    assert asyncio.run(_rows_and_tier(pro_on_schema, tenant.id)) == (keys, "schema")

    again = asyncio.run(_demo_tenant(pro_on_schema, (tenant.id, key_id, secret)))  # the next run: nothing to do
    assert again == (moved, key_id, secret, True)
