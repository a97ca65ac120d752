"""What a verified Stripe event does to a tenant (inside the caller's transaction).

Ordering: Stripe's `created` is compared per tenant, separately for
subscription events (`subscription_event_at`) and invoice events
(`payment_event_at`): an event older than the newest applied of its kind is
ignored, so a late `subscription.updated` or `invoice.payment_failed` never
overwrites newer state. Equal timestamps apply in delivery order.

An event for a customer no tenant has yet (a subscription event that beat
`checkout.session.completed`) is kept with its payload as
`unknown_customer`; onboarding replays those once it links the customer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry import tenants as tenant_lifecycle
from tenantry.billing.dunning import mark_past_due, restore_paid
from tenantry.billing.subscriptions import ENDED_STATUSES, PAST_DUE_STATUSES, plan_for_subscription
from tenantry.db.models import stripe_webhook_events, tenants
from tenantry.settings import Settings

SUBSCRIPTION_EVENTS = {
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
}
INVOICE_EVENTS = {"invoice.payment_failed", "invoice.paid"}
UNKNOWN_CUSTOMER = "unknown_customer"


def customer_of(obj: dict[str, Any]) -> str | None:
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return str(customer) if customer else None


async def _tenant_for_customer(conn: AsyncConnection, customer: str | None) -> Any:
    if customer is None:
        return None
    return (
        await conn.execute(
            select(
                tenants.c.id,
                tenants.c.subscription_event_at,
                tenants.c.payment_event_at,
                tenants.c.plan_before_restriction,
            )
            .where(tenants.c.stripe_customer_id == customer)
            .with_for_update()
        )
    ).one_or_none()


async def apply_event(
    conn: AsyncConnection, settings: Settings, kind: str, created: datetime, obj: dict[str, Any]
) -> str:
    """Apply one event; return its outcome (recorded with the event id)."""
    if kind not in SUBSCRIPTION_EVENTS and kind not in INVOICE_EVENTS:
        return "ignored"
    tenant = await _tenant_for_customer(conn, customer_of(obj))
    if tenant is None:
        return UNKNOWN_CUSTOMER
    if kind in INVOICE_EVENTS:
        if tenant.payment_event_at is not None and created < tenant.payment_event_at:
            return "stale_ignored"
        await conn.execute(update(tenants).where(tenants.c.id == tenant.id).values(payment_event_at=created))
        if kind == "invoice.payment_failed":
            await mark_past_due(conn, tenant.id, created)
            return "past_due"
        await restore_paid(conn, tenant.id)
        return "paid"
    return await _subscription(conn, settings, kind, created, obj, tenant)


async def _subscription(
    conn: AsyncConnection, settings: Settings, kind: str, created: datetime, sub: dict[str, Any], tenant: Any
) -> str:
    if tenant.subscription_event_at is not None and created < tenant.subscription_event_at:
        return "stale_ignored"
    status = "canceled" if kind == "customer.subscription.deleted" else str(sub.get("status") or "active")
    plan = settings.billing_canceled_plan if status in ENDED_STATUSES else plan_for_subscription(settings, sub)
    values: dict[str, Any] = {
        "stripe_subscription_id": sub.get("id"),
        "subscription_status": status,
        "subscription_event_at": created,
        "updated_at": func.now(),
    }
    await conn.execute(update(tenants).where(tenants.c.id == tenant.id).values(**values))
    if plan is not None:
        # A tenant restricted by dunning gets its new plan back when it pays, not before.
        await tenant_lifecycle.set_subscribed_plan(
            conn, tenant.id, plan, restricted=tenant.plan_before_restriction is not None
        )
    if status in PAST_DUE_STATUSES:
        await mark_past_due(conn, tenant.id, created)
    elif status in {"active", "trialing"}:
        await restore_paid(conn, tenant.id)
    return f"subscription:{status}" + (f":{plan}" if plan else "")


async def replay_unmatched(conn: AsyncConnection, settings: Settings, customer: str) -> int:
    """Apply, oldest first, the events kept for `customer` before any tenant had it."""
    rows = (
        await conn.execute(
            select(stripe_webhook_events.c.id, stripe_webhook_events.c.type, stripe_webhook_events.c.payload)
            .where(
                stripe_webhook_events.c.customer == customer,
                stripe_webhook_events.c.outcome == UNKNOWN_CUSTOMER,
            )
            .order_by(stripe_webhook_events.c.created, stripe_webhook_events.c.received_at)
            .with_for_update()
        )
    ).all()
    for row in rows:
        event = row.payload or {}
        created = datetime.fromtimestamp(int(event.get("created") or 0), tz=UTC)
        obj = (event.get("data") or {}).get("object") or {}
        outcome = await apply_event(conn, settings, row.type, created, obj)
        await conn.execute(
            update(stripe_webhook_events)
            .where(stripe_webhook_events.c.id == row.id)
            .values(outcome=f"replayed:{outcome}", payload=None)
        )
    return len(rows)
