"""`POST /webhooks/stripe`: signatures, duplicates, ordering, plans, dunning."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from sqlalchemy import select

from tenantry.auth.api_keys import create_key
from tenantry.billing.dunning import enforce_past_due
from tenantry.billing.reporter import utcnow
from tenantry.db.engine import Database
from tenantry.db.models import stripe_webhook_events, tenants
from tenantry.settings import Settings
from tests.billing.conftest import in_process, make_tenant, new_customer, post_event, stripe_event, subscription


async def _tenant_state(db: Database, tenant_id: uuid.UUID) -> dict[str, object]:
    async with db.system() as conn:
        row = (
            await conn.execute(
                select(
                    tenants.c.plan,
                    tenants.c.status,
                    tenants.c.subscription_status,
                    tenants.c.past_due_since,
                    tenants.c.plan_before_restriction,
                ).where(tenants.c.id == tenant_id)
            )
        ).one()
    return dict(row._mapping)


async def _seen(db: Database, event_id: str) -> bool:
    async with db.system() as conn:
        found = await conn.execute(select(stripe_webhook_events.c.id).where(stripe_webhook_events.c.id == event_id))
        return found.first() is not None


async def test_bad_signature_is_400_and_changes_nothing(billing_settings: Settings, db: Database) -> None:
    customer = new_customer()
    tenant = await make_tenant(db, customer=customer)
    payload = stripe_event("customer.subscription.updated", subscription(customer, plan="pro"), event_id="evt_bad1")
    async with in_process(billing_settings) as (client, _):
        r = await post_event(client, payload, secret="whsec_someone_else")
        missing = await client.post("/webhooks/stripe", content=payload)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_signature")
    assert missing.status_code == 400
    assert (await _tenant_state(db, tenant))["plan"] == "free"
    assert not await _seen(db, "evt_bad1")


async def test_stale_signature_timestamp_is_400_and_changes_nothing(billing_settings: Settings, db: Database) -> None:
    customer = new_customer()
    tenant = await make_tenant(db, customer=customer)
    payload = stripe_event("customer.subscription.updated", subscription(customer, plan="pro"))
    async with in_process(billing_settings) as (client, _):
        r = await post_event(client, payload, timestamp=int(time.time()) - 3600)
    assert (r.status_code, r.json()["error"]) == (400, "stale_signature")
    assert (await _tenant_state(db, tenant))["plan"] == "free"


async def test_empty_webhook_secret_disables_the_endpoint(billing_settings: Settings) -> None:
    disabled = billing_settings.model_copy(update={"stripe_webhook_secret": ""})
    async with in_process(disabled) as (client, _):
        r = await post_event(client, stripe_event("invoice.paid", {}), secret="anything")
    assert (r.status_code, r.json()["error"]) == (404, "webhooks_disabled")


async def test_duplicate_delivery_has_no_second_effect(billing_settings: Settings, db: Database) -> None:
    customer = new_customer()
    tenant = await make_tenant(db, customer=customer)
    payload = stripe_event("customer.subscription.updated", subscription(customer, plan="pro"))
    async with in_process(billing_settings) as (client, _):
        first = await post_event(client, payload)
        async with db.system() as conn:  # an operator changes the plan in between
            await conn.execute(tenants.update().where(tenants.c.id == tenant).values(plan="starter"))
        second = await post_event(client, payload)
    assert first.json()["outcome"] == "subscription:active:pro"
    assert (second.status_code, second.json()) == (200, {"received": True, "duplicate": True})
    assert (await _tenant_state(db, tenant))["plan"] == "starter"


async def test_out_of_order_subscription_events_leave_the_newest_state(
    billing_settings: Settings, db: Database
) -> None:
    customer = new_customer()
    tenant = await make_tenant(db, customer=customer)
    now = int(time.time())
    newer = stripe_event("customer.subscription.updated", subscription(customer, plan="pro"), created=now)
    older = stripe_event("customer.subscription.updated", subscription(customer, plan="starter"), created=now - 60)
    created = stripe_event("customer.subscription.created", subscription(customer, plan="free"), created=now - 120)
    async with in_process(billing_settings) as (client, _):
        assert (await post_event(client, newer)).status_code == 200
        stale = await post_event(client, older)
        await post_event(client, created)
    assert stale.json()["outcome"] == "stale_ignored"
    state = await _tenant_state(db, tenant)
    assert (state["plan"], state["subscription_status"]) == ("pro", "active")


async def test_plan_upgrade_takes_effect_on_the_next_call(billing_settings: Settings, db: Database) -> None:
    cached = billing_settings.model_copy(
        update={"auth_cache_ttl_seconds": 300, "billing_price_plans": {"price_pro_monthly": "pro"}}
    )
    customer = new_customer()
    tenant = await make_tenant(db, customer=customer)
    async with db.system() as conn:
        _, secret = await create_key(conn, tenant, "k")
    async with in_process(cached) as (client, services):
        before = await services.resolver.resolve(secret)  # and now it is cached
        payload = stripe_event("customer.subscription.updated", subscription(customer, price="price_pro_monthly"))
        assert (await post_event(client, payload)).status_code == 200
        after = await services.resolver.resolve(secret)
    assert (before.plan, before.limits.calls_per_window) == ("free", 100)
    # The next call is metered against the new plan's quota.
    assert (after.plan, after.limits.calls_per_window) == ("pro", 10_000)


async def test_deleted_subscription_moves_the_tenant_to_the_canceled_plan(
    billing_settings: Settings, db: Database
) -> None:
    customer = new_customer()
    tenant = await make_tenant(db, customer=customer, plan="pro")
    async with in_process(billing_settings) as (client, _):
        await post_event(client, stripe_event("customer.subscription.deleted", subscription(customer, plan="pro")))
    state = await _tenant_state(db, tenant)
    assert (state["plan"], state["subscription_status"]) == ("free", "canceled")


async def test_failed_payment_restricts_after_grace_and_paid_invoice_restores(
    billing_settings: Settings, db: Database
) -> None:
    customer = new_customer()
    tenant = await make_tenant(db, customer=customer, plan="pro")
    invoice = {"object": "invoice", "customer": customer}
    async with in_process(billing_settings) as (client, _):
        await post_event(client, stripe_event("invoice.payment_failed", invoice))
        state = await _tenant_state(db, tenant)
        assert (state["plan"], state["subscription_status"]) == ("pro", "past_due")  # grace period
        async with db.system() as conn:
            assert await enforce_past_due(conn, billing_settings, utcnow()) == []
            grace = timedelta(seconds=billing_settings.billing_past_due_grace_seconds + 1)
            assert tenant in await enforce_past_due(conn, billing_settings, utcnow() + grace)
        state = await _tenant_state(db, tenant)
        assert (state["plan"], state["plan_before_restriction"]) == ("free", "pro")
        await post_event(client, stripe_event("invoice.paid", invoice))
    state = await _tenant_state(db, tenant)
    assert (state["plan"], state["status"], state["past_due_since"]) == ("pro", "active", None)


async def test_suspend_policy_suspends_after_grace_and_paid_invoice_reactivates(
    billing_settings: Settings, db: Database
) -> None:
    strict = billing_settings.model_copy(
        update={"billing_past_due_policy": "suspend", "billing_past_due_grace_seconds": 0}
    )
    customer = new_customer()
    tenant = await make_tenant(db, customer=customer, plan="starter")
    invoice = {"object": "invoice", "customer": customer}
    async with in_process(strict) as (client, _):
        await post_event(client, stripe_event("invoice.payment_failed", invoice))
        async with db.system() as conn:
            await enforce_past_due(conn, strict, utcnow() + timedelta(seconds=1))
        assert (await _tenant_state(db, tenant))["status"] == "suspended"
        await post_event(client, stripe_event("invoice.paid", invoice))
    state = await _tenant_state(db, tenant)
    assert (state["plan"], state["status"]) == ("starter", "active")


async def test_an_older_payment_failure_arriving_after_payment_changes_nothing(
    billing_settings: Settings, db: Database
) -> None:
    customer = new_customer()
    tenant = await make_tenant(db, customer=customer, plan="pro")
    invoice = {"object": "invoice", "customer": customer}
    now = int(time.time())
    async with in_process(billing_settings) as (client, _):
        await post_event(client, stripe_event("invoice.paid", invoice, created=now))
        late = await post_event(client, stripe_event("invoice.payment_failed", invoice, created=now - 30))
    assert late.json()["outcome"] == "stale_ignored"
    assert (await _tenant_state(db, tenant))["past_due_since"] is None
