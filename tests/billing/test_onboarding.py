"""Onboarding from `checkout.session.completed`, and offboarding: idempotent, resumable, canary-gated."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tenantry.auth.api_keys import create_key
from tenantry.auth.jwt import issue_canary_token, issue_tenant_token
from tenantry.billing.onboarding import STEPS
from tenantry.client import call_tool
from tenantry.db.engine import Database
from tenantry.db.models import api_keys, onboarding_keys, tenants, usage_archive
from tenantry.errors import Unavailable
from tenantry.settings import Settings
from tests.billing.conftest import (
    in_process,
    make_tenant,
    new_customer,
    post_event,
    record,
    serve_app,
    stripe_event,
    subscription,
)
from tests.billing.fake_stripe import FakeStripe
from tests.conftest import ADMIN_KEY, free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def checkout(customer: str, plan: str = "pro") -> dict[str, Any]:
    return {
        "id": f"cs_test_{uuid.uuid4().hex}",
        "object": "checkout.session",
        "customer": customer,
        "subscription": f"sub_{customer}",
        "metadata": {"plan": plan, "tenant_name": "Acme"},
        "customer_details": {"email": "ops@acme.test"},
    }


async def _onboarded(db: Database, session_id: str) -> list[Any]:
    async with db.system() as conn:
        return (
            await conn.execute(
                select(
                    tenants.c.id,
                    tenants.c.status,
                    tenants.c.plan,
                    tenants.c.stripe_customer_id,
                    tenants.c.stripe_subscription_id,
                    tenants.c.canary_passed_at,
                    select(func.count()).where(api_keys.c.tenant_id == tenants.c.id).scalar_subquery().label("keys"),
                ).where(tenants.c.checkout_session_id == session_id)
            )
        ).all()


def _assert_one_active_tenant(rows: list[Any], customer: str) -> None:
    assert len(rows) == 1
    (row,) = rows
    assert (row.status, row.plan, row.stripe_customer_id) == ("active", "pro", customer)
    assert row.stripe_subscription_id == f"sub_{customer}"
    assert row.canary_passed_at is not None
    assert row.keys == 1


async def test_the_same_checkout_twice_yields_one_active_tenant_whose_canary_passed(
    billing_settings: Settings, db: Database
) -> None:
    customer = new_customer()
    session = checkout(customer)
    payload = stripe_event("checkout.session.completed", session)
    with serve_app(billing_settings) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            first = await post_event(client, payload)
            second = await post_event(client, payload)
            # Stripe may also send the same session under another event id.
            third = await post_event(client, stripe_event("checkout.session.completed", session))
    assert first.status_code == 200, first.text
    body = first.json()["onboarding"]
    assert body["status"] == "active"
    assert body["steps"] == list(STEPS)
    assert body["canary"]["tenant_id"] == body["tenant_id"]
    assert second.json() == {"received": True, "duplicate": True}
    assert third.json()["onboarding"]["status"] == "active"
    _assert_one_active_tenant(await _onboarded(db, session["id"]), customer)


@pytest.mark.parametrize("step", STEPS[:-1])
async def test_a_failure_at_any_step_leaves_provisioning_and_a_retry_finishes(
    billing_settings: Settings, db: Database, step: str
) -> None:
    customer = new_customer()
    session = checkout(customer)
    payload = stripe_event("checkout.session.completed", session)
    failures: list[str] = []

    async def fail_once(at: str) -> None:
        if at == step and not failures:
            failures.append(at)
            raise Unavailable(f"injected failure after {at}", code="injected")

    with serve_app(billing_settings) as (url, services):
        assert services.billing is not None
        services.billing.onboarding.fault = fail_once
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            failed = await post_event(client, payload)
            rows = await _onboarded(db, session["id"])
            retried = await post_event(client, payload)
    assert (failed.status_code, failed.json()["error"]) == (503, "injected")
    assert [r.status for r in rows] == ["provisioning"]
    assert retried.status_code == 200, retried.text
    _assert_one_active_tenant(await _onboarded(db, session["id"]), customer)


async def test_a_failing_canary_keeps_the_tenant_provisioning_until_it_passes(
    billing_settings: Settings, db: Database
) -> None:
    customer = new_customer()
    session = checkout(customer)
    payload = stripe_event("checkout.session.completed", session)
    with serve_app(billing_settings) as (url, services):
        assert services.billing is not None
        services.billing.onboarding.base_url = f"http://127.0.0.1:{free_port()}"  # nothing answers there
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            failed = await post_event(client, payload)
            rows = await _onboarded(db, session["id"])
            claim = await client.post(f"/api/tenants/{rows[0].id}/onboarding-key", headers=ADMIN)
            services.billing.onboarding.base_url = url
            retried = await post_event(client, payload)
    assert (failed.status_code, failed.json()["error"]) == (503, "canary_failed")
    assert [(r.status, r.canary_passed_at) for r in rows] == [("provisioning", None)]
    assert (claim.status_code, claim.json()["error"]) == (409, "not_active")
    assert retried.status_code == 200
    _assert_one_active_tenant(await _onboarded(db, session["id"]), customer)


async def test_the_onboarding_key_is_handed_out_once_and_works(billing_settings: Settings, db: Database) -> None:
    customer = new_customer()
    session = checkout(customer)
    with serve_app(billing_settings) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            onboarded = await post_event(client, stripe_event("checkout.session.completed", session))
            tenant_id = onboarded.json()["onboarding"]["tenant_id"]
            claim = await client.post(f"/api/tenants/{tenant_id}/onboarding-key", headers=ADMIN)
            again = await client.post(f"/api/tenants/{tenant_id}/onboarding-key", headers=ADMIN)
            nobody = await client.post(f"/api/tenants/{tenant_id}/onboarding-key")
        headers = {"Tenant-ID": tenant_id, "Authorization": f"Bearer {claim.json()['secret']}"}
        result = await call_tool(f"{url}/mcp", headers, "http", "health_check", {})
    assert claim.status_code == 200
    assert (again.status_code, again.json()["error"]) == (409, "onboarding_key_claimed")
    assert nobody.status_code == 401
    assert result["structuredContent"]["tenant_id"] == tenant_id
    async with db.system() as conn:
        stored = (
            await conn.execute(select(onboarding_keys.c.ciphertext).where(onboarding_keys.c.tenant_id == tenant_id))
        ).scalar_one()
    assert stored is None  # erased once handed out


async def test_offboarding_revokes_reports_archives_and_soft_deletes(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe
) -> None:
    customer = new_customer()
    stripe_fake.customers.add(customer)
    tenant = await make_tenant(db, customer=customer)
    billable = await record(db, tenant, 5, 2)
    async with in_process(billing_settings) as (client, _):
        key = await client.post(f"/api/tenants/{tenant}/keys", headers=ADMIN, json={"name": "k"})
        first = await client.delete(f"/api/tenants/{tenant}", headers=ADMIN)
        second = await client.delete(f"/api/tenants/{tenant}", headers=ADMIN)
    assert key.status_code == 201
    body = first.json()
    assert (body["status"], body["offboarding"]["keys_revoked"]) == ("deprovisioned", 1)
    assert body["offboarding"]["report"]["units_sent"] == billable
    assert body["offboarding"]["events_archived"] == 7
    assert stripe_fake.billed(customer) == billable
    assert second.json()["deleted_at"] == body["deleted_at"]
    assert second.json()["offboarding"]["events_archived"] == 0
    async with db.system() as conn:
        archived = (await conn.execute(select(func.count()).where(usage_archive.c.tenant_id == tenant))).scalar_one()
    assert archived == 7


async def test_a_provisioning_tenant_is_admitted_only_with_the_gateways_canary_token(
    billing_settings: Settings, db: Database
) -> None:
    tenant = await make_tenant(db, customer=None)
    async with db.system() as conn:
        info, secret = await create_key(conn, tenant, "k")
        await conn.execute(tenants.update().where(tenants.c.id == tenant).values(status="provisioning"))
    body = {"method": "health_check"}
    async with in_process(billing_settings) as (client, _):
        with_key = await client.post(
            f"/api/tenant/{tenant}/tool", json=body, headers={"Authorization": f"Bearer {secret}"}
        )
        jwt = issue_tenant_token(billing_settings, tenant, info.id, subject="x", roles=())
        with_jwt = await client.post(
            f"/api/tenant/{tenant}/tool", json=body, headers={"Authorization": f"Bearer {jwt}"}
        )
        with_canary = await client.post(
            f"/api/tenant/{tenant}/tool",
            json=body,
            headers={"Authorization": f"Bearer {issue_canary_token(billing_settings, tenant, info.id)}"},
        )
    assert (with_key.status_code, with_key.json()["error"]) == (403, "tenant_provisioning")
    assert (with_jwt.status_code, with_jwt.json()["error"]) == (403, "tenant_provisioning")
    assert with_canary.status_code == 200, with_canary.text
    assert with_canary.json()["structuredContent"]["tenant_id"] == str(tenant)


async def test_a_subscription_event_that_beats_checkout_is_applied_by_onboarding(
    billing_settings: Settings, db: Database
) -> None:
    priced = billing_settings.model_copy(update={"billing_price_plans": {"price_ent": "enterprise"}})
    customer = new_customer()
    session = checkout(customer, plan="starter")
    early = stripe_event("customer.subscription.created", subscription(customer, price="price_ent"))
    failures: list[str] = []

    async def fail_after_replay_once(at: str) -> None:
        if at == "stripe_ids" and not failures:
            failures.append(at)
            raise Unavailable("injected", code="injected")

    payload = stripe_event("checkout.session.completed", session)
    with serve_app(priced) as (url, services):
        assert services.billing is not None
        services.billing.onboarding.fault = fail_after_replay_once
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            kept = await post_event(client, early)
            failed = await post_event(client, payload)
            onboarded = await post_event(client, payload)
    assert kept.json()["outcome"] == "unknown_customer"
    assert failed.status_code == 503
    assert onboarded.json()["onboarding"]["status"] == "active"
    (row,) = await _onboarded(db, session["id"])
    assert (row.status, row.plan) == ("active", "enterprise")


async def test_concurrent_deliveries_of_one_checkout_make_one_tenant_with_one_key(
    billing_settings: Settings, db: Database
) -> None:
    customer = new_customer()
    session = checkout(customer)
    with serve_app(billing_settings) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            results = await asyncio.gather(
                *(post_event(client, stripe_event("checkout.session.completed", session)) for _ in range(3))
            )
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    _assert_one_active_tenant(await _onboarded(db, session["id"]), customer)
