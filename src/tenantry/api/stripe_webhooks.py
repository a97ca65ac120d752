"""`POST /webhooks/stripe`: verified, deduplicated, order-aware Stripe events.

- The signature is checked on the raw body (`stripe.Webhook.construct_event`,
  `TENANTRY_STRIPE_WEBHOOK_TOLERANCE_SECONDS`); a bad or stale signature is a
  400 and changes nothing. An empty `TENANTRY_STRIPE_WEBHOOK_SECRET` disables
  the endpoint (404 `webhooks_disabled`).
- Each event id is recorded in `stripe_webhook_events` in the same
  transaction as its effect, so a duplicate delivery changes nothing (a
  concurrent duplicate waits on the primary key, then sees it).
- Stripe delivers out of order: see `billing.events` (newest state wins, and
  events that beat onboarding are replayed by it).
- A plan change whose tier differs from where the tenant's data is makes the
  tenant due for a move, run by the tier mover (`tier_moves.py`) after the
  answer: the webhook never waits for a copy.
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
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.api.deps import AdminDep, ServicesDep
from tenantry.api.openapi import errors
from tenantry.billing.events import UNKNOWN_CUSTOMER, apply_event, customer_of
from tenantry.billing.onboarding import claim_onboarding_key
from tenantry.db.models import stripe_webhook_events
from tenantry.errors import BadRequest, NotFound, Unavailable
from tenantry.services import Services
from tenantry.settings import Settings
from tenantry.tenancy import parse_tenant_id

log = logging.getLogger(__name__)

router = APIRouter()


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


@router.post("/webhooks/stripe", responses=errors(400, 404, 409, 413, 503))
async def stripe_webhook(request: Request, services: ServicesDep) -> dict[str, Any]:
    if not services.settings.stripe_webhook_secret:
        raise NotFound("the Stripe webhook endpoint is disabled (no webhook secret)", code="webhooks_disabled")
    event = verify(services.settings, await request.body(), request.headers.get("stripe-signature"))
    return await handle_event(services, event)


@router.post("/api/tenants/{tenant_id}/onboarding-key", dependencies=[AdminDep], responses=errors(400, 401, 404, 409))
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
        outcome = await apply_event(conn, services.settings, event["type"], created, obj)
        kept: dict[str, Any] = {}
        if outcome == UNKNOWN_CUSTOMER:  # kept for onboarding to replay once it links the customer
            kept = {"customer": customer_of(obj), "payload": event}
        await conn.execute(
            update(stripe_webhook_events)
            .where(stripe_webhook_events.c.id == event["id"])
            .values(outcome=outcome, **kept)
        )
    log.info("stripe webhook %s %s: %s", event["id"], event["type"], outcome)
    if outcome.startswith("subscription:") and services.billing is not None:
        services.billing.mover.wake()  # a plan whose tier differs is moved by the mover, not in this request
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
