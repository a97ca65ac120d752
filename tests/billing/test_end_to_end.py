"""Finance's invariant end to end: through the real gateway, metered and ledgered, reported to (fake)
Stripe across a reporter crash, the billed units equal the successful tool calls, and nothing else."""

from __future__ import annotations

import uuid

import httpx
import pytest
from mcp.shared.exceptions import MCPError
from sqlalchemy import text

from tenantry.billing.reconcile import reconcile
from tenantry.client import connect
from tenantry.db.engine import Database
from tenantry.settings import Settings
from tests.billing.conftest import Clock, new_customer, serve_app
from tests.billing.fake_stripe import FakeStripe
from tests.billing.test_reporter import Killed, drain, reporter
from tests.conftest import ADMIN_KEY, Admin
from tests.metering.test_gateway_metering import ledger_count_is


async def test_billed_units_equal_successful_tool_calls_through_the_gateway(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe, clock: Clock
) -> None:
    customer = new_customer()
    stripe_fake.customers.add(customer)
    with serve_app(billing_settings) as (url, _):
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            tenant = await Admin(http).create_tenant(plan="starter")
            r = await http.patch(f"/api/tenants/{tenant.id}", json={"limits": {"calls_per_window": 10}})
            assert r.status_code == 200
        async with db.system() as conn:
            await conn.execute(
                text("UPDATE tenants SET stripe_customer_id = :c WHERE id = :t"),
                {"c": customer, "t": uuid.UUID(tenant.id)},
            )
        async with connect(f"{url}/mcp", tenant.headers) as client:
            ok = [await client.call_tool("data_put", {"key": f"k{i}", "value": i}) for i in range(9)]
            failed = await client.call_tool("data_get", {"key": "missing"})  # admitted, ran, failed
            invalid = await client.call_tool("data_put", {"key": 1})  # refused before the meter
            with pytest.raises(MCPError):
                await client.call_tool("no_such_tool", {})  # refused before the meter
            over = await client.call_tool("data_put", {"key": "k9", "value": 9})  # the 11th unit: over quota
        assert not any(r.is_error for r in ok)
        assert failed.structured_content["error"] == "key_not_found"
        assert invalid.structured_content["error"] == "invalid_arguments"
        assert over.structured_content["error"] == "quota_exceeded"
        await ledger_count_is(db, tenant, 10)  # nine successes and one failure: every admitted call

    tenant_id = uuid.UUID(tenant.id)

    async def die_after_sending(point: str) -> None:
        if point == "after_send":
            raise Killed(point)

    with pytest.raises(Killed):
        await reporter(billing_settings, db, clock, fault=die_after_sending).run_once([tenant_id])
    await drain(reporter(billing_settings, db, clock), clock, [tenant_id])

    assert stripe_fake.billed(customer) == 9
    async with db.system() as conn:
        (row,) = await reconcile(conn, tenant_id)
    assert (row["ledger_units"], row["reported_units"], row["difference"]) == (9, 9, 0)
    assert row["failed_calls"] == 1
