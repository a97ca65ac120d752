"""`POST /webhooks/stripe`: verified, deduplicated, order-aware Stripe events.

- The signature is checked on the raw body (`stripe.Webhook.construct_event`,
  `TENANTRY_STRIPE_WEBHOOK_TOLERANCE_SECONDS`); a bad or stale signature is a
  400 and changes nothing. An empty `TENANTRY_STRIPE_WEBHOOK_SECRET` disables
  the endpoint (404 `webhooks_disabled`).
- Each event id is recorded in `stripe_webhook_events` in the same
  transaction as its effect, so a duplicate delivery changes nothing (a
  concurrent duplicate waits on the primary key, then sees it).
- Stripe delivers out of order: a subscription event older (by `created`)
  than the newest one applied to that tenant is recorded and ignored.
- `checkout.session.completed` runs onboarding outside that transaction (it
  calls the gateway itself); its id is recorded only once onboarding
  finished, so a failed step answers 503 and Stripe's retry resumes it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import stripe
from fastapi import APIRouter, Request
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.api.deps import AdminDep, ServicesDep
from tenantry.billing.dunning import mark_past_due, restore_paid
from tenantry.billing.onboarding import claim_onboarding_key
from tenantry.billing.plans import ENDED_STATUSES, PAST_DUE_STATUSES, plan_for_subscription
from tenantry.db.models import stripe_webhook_events, tenants
from tenantry.errors import BadRequest, NotFound, Unavailable
from tenantry.services import Services
from tenantry.settings import Settings
from tenantry.tenancy import parse_tenant_id

log = logging.getLogger(__name__)

router = APIRouter()

SUBSCRIPTION_EVENTS = {
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
}


def verify(settings: Settings, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event in `payload` if Stripe signed it within the tolerance; a 400 otherwise."""
    try:
        stripe.Webhook.construct_event(
            payload, signature, settings.stripe_webhook_secret, tolerance=settings.stripe_webhook_tolerance_seconds
        )
    except stripe.SignatureVerificationError as exc:
        stale = "tolerance" in str(exc)
        raise BadRequest(
            "the signature timestamp is too old" if stale else "the Stripe signature does not match",
            code="stale_signature" if stale else "invalid_signature",
        ) from None
    except ValueError:
        raise BadRequest("the body is not a JSON event", code="invalid_json") from None
    event: dict[str, Any] = json.loads(payload)
    if not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        raise BadRequest("the event has no id or type", code="invalid_event")
    return event


@router.post("/webhooks/stripe")
async def stripe_webhook(request: Request, services: ServicesDep) -> dict[str, Any]:
    if not services.settings.stripe_webhook_secret:
        raise NotFound("the Stripe webhook endpoint is disabled (no webhook secret)", code="webhooks_disabled")
    event = verify(services.settings, await request.body(), request.headers.get("stripe-signature"))
    return await handle_event(services, event)


@router.post("/api/tenants/{tenant_id}/onboarding-key", dependencies=[AdminDep])
async def claim_key(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    """Hand out an onboarded tenant's first API key, once."""
    return await claim_onboarding_key(services.db, services.settings, parse_tenant_id(tenant_id))


async def handle_event(services: Services, event: dict[str, Any]) -> dict[str, Any]:
    created = datetime.fromtimestamp(int(event.get("created") or 0), tz=UTC)
    obj: dict[str, Any] = (event.get("data") or {}).get("object") or {}
    if event["type"] == "checkout.session.completed":
        return await _checkout(services, event, created, obj)
    async with services.db.system() as conn:
        if not await _record(conn, event, created, "received"):
            return {"received": True, "duplicate": True}
        outcome = await _dispatch(conn, services.settings, event["type"], created, obj)
        await conn.execute(
            update(stripe_webhook_events).where(stripe_webhook_events.c.id == event["id"]).values(outcome=outcome)
        )
    services.resolver.invalidate()
    log.info("stripe webhook %s %s: %s", event["id"], event["type"], outcome)
    return {"received": True, "outcome": outcome}


async def _record(conn: AsyncConnection, event: dict[str, Any], created: datetime, outcome: str) -> bool:
    result = await conn.execute(
        insert(stripe_webhook_events)
        .values(id=event["id"], type=event["type"], created=created, outcome=outcome)
        .on_conflict_do_nothing()
        .returning(stripe_webhook_events.c.id)
    )
    return result.first() is not None


async def _checkout(
    services: Services, event: dict[str, Any], created: datetime, obj: dict[str, Any]
) -> dict[str, Any]:
    async with services.db.system() as conn:
        seen = (
            await conn.execute(select(stripe_webhook_events.c.id).where(stripe_webhook_events.c.id == event["id"]))
        ).first()
    if seen is not None:
        return {"received": True, "duplicate": True}
    if services.billing is None:
        raise Unavailable("billing is not configured", code="billing_disabled")
    result = await services.billing.onboarding.onboard(obj)  # raises (503) if a step failed: Stripe retries
    async with services.db.system() as conn:
        await _record(conn, event, created, f"onboarded:{result.status}")
    return {"received": True, "outcome": "onboarded", "onboarding": result.public()}


async def _tenant_for_customer(conn: AsyncConnection, customer: Any) -> Any:
    if not customer:
        return None
    customer_id = customer.get("id") if isinstance(customer, dict) else str(customer)
    return (
        await conn.execute(
            select(tenants.c.id, tenants.c.subscription_event_at, tenants.c.plan_before_restriction)
            .where(tenants.c.stripe_customer_id == customer_id)
            .with_for_update()
        )
    ).one_or_none()


async def _dispatch(
    conn: AsyncConnection, settings: Settings, kind: str, created: datetime, obj: dict[str, Any]
) -> str:
    if kind not in SUBSCRIPTION_EVENTS and kind not in {"invoice.payment_failed", "invoice.paid"}:
        return "ignored"
    tenant = await _tenant_for_customer(conn, obj.get("customer"))
    if tenant is None:
        return "unknown_customer"
    if kind == "invoice.payment_failed":
        await mark_past_due(conn, tenant.id, created)
        return "past_due"
    if kind == "invoice.paid":
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
    if plan is not None:
        # A tenant restricted by dunning gets its new plan back when it pays, not before.
        values["plan_before_restriction" if tenant.plan_before_restriction else "plan"] = plan
    await conn.execute(update(tenants).where(tenants.c.id == tenant.id).values(**values))
    if status in PAST_DUE_STATUSES:
        await mark_past_due(conn, tenant.id, created)
    elif status in {"active", "trialing"}:
        await restore_paid(conn, tenant.id)
    return f"subscription:{status}" + (f":{plan}" if plan else "")


_LAST_WEBHOOK = text("SELECT max(received_at) FROM stripe_webhook_events")


async def last_webhook_at(conn: AsyncConnection) -> datetime | None:
    value: datetime | None = (await conn.execute(_LAST_WEBHOOK)).scalar()
    return value
