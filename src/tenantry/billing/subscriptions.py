"""Which plan a Stripe subscription stands for.

Choice (documented in the README): a subscription item's price id, then its
product id, looked up in `TENANTRY_BILLING_PRICE_PLANS`; failing that, the
subscription's `metadata.plan` if it names a known plan; failing that, the
plan is left as it is. Price ids win because they are what the customer
actually pays for; metadata is the convenient fallback for simple setups.
A canceled subscription moves the tenant to `TENANTRY_BILLING_CANCELED_PLAN`.
"""

from __future__ import annotations

from typing import Any

from tenantry.settings import Settings

ACTIVE_STATUSES = {"active", "trialing"}
PAST_DUE_STATUSES = {"past_due", "unpaid"}
ENDED_STATUSES = {"canceled", "incomplete_expired"}


def plan_for_subscription(settings: Settings, subscription: dict[str, Any]) -> str | None:
    items = (subscription.get("items") or {}).get("data") or []
    for item in items:
        price = item.get("price") or {}
        product = price.get("product")
        product_id = product.get("id") if isinstance(product, dict) else product
        for key in (price.get("id"), product_id):
            if key and key in settings.billing_price_plans:
                return settings.billing_price_plans[key]
    plan = (subscription.get("metadata") or {}).get("plan")
    if isinstance(plan, str) and plan in settings.plans:
        return plan
    return None


def plan_for_checkout(settings: Settings, session: dict[str, Any]) -> str:
    plan = (session.get("metadata") or {}).get("plan")
    if isinstance(plan, str) and plan in settings.plans:
        return plan
    return settings.default_plan
