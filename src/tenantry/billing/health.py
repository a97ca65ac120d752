"""Billing checks for `/health`, each named and answered on its own.

- `billing_unreported`: successful usage of billable tenants (with a Stripe
  customer) not covered by any report for more than 10 minutes; fails if any.
  Tenants without a customer are listed as `unbillable_*`, visible but not a
  failure (their usage is recorded, deliberately not reported).
- `billing_stripe`: seconds since Stripe last accepted a meter event (any
  replica); fails if a pending report is older than 10 minutes.
- `billing_webhooks`: seconds since the last webhook arrived (informational).
- `billing_parked`: reports Stripe refused for good; fails if any.
- `tier_moves`: plan-driven tier moves still to run (`tier_moves.py`), the
  failing ones named with their last error; informational (one tenant's stuck
  move must not fail every replica's readiness; its `/health?tenant=` fails).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text

from tenantry import tier_moves
from tenantry.db.engine import Database
from tenantry.settings import Settings

Check = dict[str, Any]
STALE_AFTER_SECONDS = 600

_UNREPORTED = text(
    """
    SELECT count(*) FILTER (WHERE t.stripe_customer_id IS NOT NULL
                            AND e.recorded_at < now() - make_interval(secs => :stale)) AS stale_events,
           extract(epoch FROM now() - min(e.recorded_at) FILTER (WHERE t.stripe_customer_id IS NOT NULL)) AS oldest,
           count(*) FILTER (WHERE t.stripe_customer_id IS NULL) AS unbillable_events,
           count(DISTINCT e.tenant_id) FILTER (WHERE t.stripe_customer_id IS NULL) AS unbillable_tenants
    FROM usage_events e JOIN tenants t ON t.id = e.tenant_id
    WHERE e.outcome = 'ok'
      AND NOT EXISTS (SELECT 1 FROM usage_report_events r WHERE r.tenant_id = e.tenant_id AND r.event_id = e.event_id)
    """
)
_STRIPE = text(
    """
    SELECT extract(epoch FROM now() - (SELECT max(sent_at) FROM usage_reports)) AS since_success,
           (SELECT count(*) FROM usage_reports WHERE status = 'pending') AS pending,
           (SELECT count(*) FROM usage_reports WHERE status = 'pending'
              AND created_at < now() - make_interval(secs => :stale)) AS stale_pending,
           (SELECT last_error FROM usage_reports WHERE status = 'pending' AND last_error IS NOT NULL
              ORDER BY next_attempt_at DESC LIMIT 1) AS last_error
    """
)
_WEBHOOKS = text(
    "SELECT extract(epoch FROM now() - max(received_at)) AS since, count(*) AS total FROM stripe_webhook_events"
)
_PARKED = text(
    """
    SELECT tenant_id, id, units, last_error, count(*) OVER () AS total
    FROM usage_reports WHERE status = 'parked' ORDER BY created_at DESC LIMIT 5
    """
)


def billing_configured(settings: Settings) -> bool:
    return settings.billing_enabled or bool(settings.stripe_webhook_secret)


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


async def _unreported(db: Database) -> Check:
    async with db.system() as conn:
        row = (await conn.execute(_UNREPORTED, {"stale": STALE_AFTER_SECONDS})).one()
    return {
        "status": "fail" if row.stale_events else "ok",
        "older_than_10_minutes": row.stale_events,
        "oldest_age_seconds": _seconds(row.oldest),
        "unbillable_tenants": row.unbillable_tenants,
        "unbillable_events": row.unbillable_events,
    }


async def _stripe(db: Database, settings: Settings) -> Check:
    async with db.system() as conn:
        row = (await conn.execute(_STRIPE, {"stale": STALE_AFTER_SECONDS})).one()
    return {
        "status": "fail" if row.stale_pending else "ok",
        "enabled": settings.billing_enabled,
        "seconds_since_last_success": _seconds(row.since_success),
        "pending_reports": row.pending,
        "last_error": row.last_error,
    }


async def _webhooks(db: Database, settings: Settings) -> Check:
    async with db.system() as conn:
        row = (await conn.execute(_WEBHOOKS)).one()
    return {
        "status": "ok",
        "enabled": bool(settings.stripe_webhook_secret),
        "seconds_since_last_webhook": _seconds(row.since),
        "events_recorded": row.total,
    }


async def _parked(db: Database) -> Check:
    async with db.system() as conn:
        rows = (await conn.execute(_PARKED)).all()
    total = rows[0].total if rows else 0
    return {
        "status": "fail" if total else "ok",
        "parked_reports": total,
        "latest": [
            {"tenant_id": str(r.tenant_id), "report_id": str(r.id), "units": r.units, "error": r.last_error}
            for r in rows
        ],
    }


_TENANT = text(
    """
    SELECT t.stripe_customer_id, t.stripe_subscription_id, t.subscription_status, t.past_due_since,
           t.plan_before_restriction,
           (SELECT count(*) FROM usage_reports r WHERE r.tenant_id = t.id AND r.status = 'parked') AS parked,
           (SELECT count(*) FROM usage_reports r WHERE r.tenant_id = t.id AND r.status = 'pending') AS pending,
           (SELECT coalesce(sum(e.units), 0) FROM usage_events e
             WHERE e.tenant_id = t.id AND e.outcome = 'ok'
               AND NOT EXISTS (SELECT 1 FROM usage_report_events c
                               WHERE c.tenant_id = e.tenant_id AND c.event_id = e.event_id)) AS unreported_units
    FROM tenants t WHERE t.id = :tenant_id
    """
)


async def tenant_billing(db: Database, tenant_id: uuid.UUID) -> Check:
    """One tenant's billing state for `/health?tenant=`: fails if its usage cannot be reported."""
    async with db.system() as conn:
        row = (await conn.execute(_TENANT, {"tenant_id": tenant_id})).one()
    return {
        "status": "fail" if row.parked else "ok",
        "billable": row.stripe_customer_id is not None,
        "stripe_customer_id": row.stripe_customer_id,
        "stripe_subscription_id": row.stripe_subscription_id,
        "subscription_status": row.subscription_status,
        "past_due_since": row.past_due_since.isoformat() if row.past_due_since else None,
        "restricted_from_plan": row.plan_before_restriction,
        "unreported_units": int(row.unreported_units),
        "pending_reports": row.pending,
        "parked_reports": row.parked,
    }


def billing_checks(db: Database, settings: Settings) -> dict[str, Callable[[], Awaitable[Check]]]:
    return {
        "billing_unreported": lambda: _unreported(db),
        "billing_stripe": lambda: _stripe(db, settings),
        "billing_webhooks": lambda: _webhooks(db, settings),
        "billing_parked": lambda: _parked(db),
        "tier_moves": lambda: tier_moves.health(db, settings),
    }
