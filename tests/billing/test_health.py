"""`/health` names each billing check and fails on stale or parked usage."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from tenantry.db.engine import Database
from tenantry.settings import Settings
from tests.billing.conftest import in_process, make_tenant, new_customer, post_event, record, stripe_event
from tests.conftest import OPS

BILLING_CHECKS = {"billing_unreported", "billing_stripe", "billing_webhooks", "billing_parked"}


async def test_health_names_the_billing_checks_when_billing_is_configured(
    billing_settings: Settings, db: Database
) -> None:
    async with in_process(billing_settings) as (client, _):
        await post_event(client, stripe_event("ping", {}))
        body = (await client.get("/health", headers=OPS)).json()
    assert set(body["checks"]) >= {"database", "redis", "app_role", *BILLING_CHECKS}
    webhooks = body["checks"]["billing_webhooks"]
    assert webhooks["enabled"] is True
    assert webhooks["seconds_since_last_webhook"] is not None
    assert "seconds_since_last_success" in body["checks"]["billing_stripe"]


async def test_stale_unreported_usage_and_parked_reports_make_health_fail(
    billing_settings: Settings, db: Database
) -> None:
    billable = await make_tenant(db, customer=new_customer())
    unbillable = await make_tenant(db, customer=None)
    await record(db, unbillable, 2)
    async with db.system() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO usage_events
                    (tenant_id, event_id, tool, units, outcome, latency_ms, occurred_at, recorded_at)
                VALUES (:t, :e, 'data_put', 1, 'ok', 1, now() - interval '11 minutes', now() - interval '11 minutes')
                """
            ),
            {"t": billable, "e": uuid.uuid4()},
        )
        await conn.execute(
            text(
                """
                INSERT INTO usage_reports
                    (tenant_id, id, meter, units, event_count, event_timestamp, status, last_error)
                VALUES (:t, :r, 'm', 3, 3, now(), 'parked', 'No such customer')
                """
            ),
            {"t": billable, "r": uuid.uuid4()},
        )
    async with in_process(billing_settings) as (client, _):
        r = await client.get("/health", headers=OPS)
    checks = r.json()["checks"]
    assert r.status_code == 503
    assert checks["billing_unreported"]["status"] == "fail"
    assert checks["billing_unreported"]["older_than_10_minutes"] >= 1
    assert checks["billing_unreported"]["unbillable_tenants"] >= 1
    assert checks["billing_parked"]["status"] == "fail"
    assert checks["billing_parked"]["parked_reports"] >= 1


async def test_health_has_no_billing_checks_when_billing_is_not_configured(settings: Settings) -> None:
    async with in_process(settings) as (client, _):
        body = (await client.get("/health", headers=OPS)).json()
    assert not BILLING_CHECKS & set(body["checks"])


async def test_tenant_health_shows_its_billing_state(billing_settings: Settings, db: Database) -> None:
    unbillable = await make_tenant(db, customer=None)
    await record(db, unbillable, 3, 1)
    async with in_process(billing_settings) as (client, _):
        r = await client.get("/health", params={"tenant": str(unbillable)}, headers=OPS)
    check = r.json()["checks"]["billing_tenant"]
    assert check["status"] == "ok"
    assert (check["billable"], check["unreported_units"], check["parked_reports"]) == (False, 3, 0)
