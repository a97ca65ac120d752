"""A Stripe plan change that asks for another isolation tier moves the tenant, after the webhook answered:
once, with its data, retried while it fails, and visible in `GET /api/tenants/{id}/tier` and `/health`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tenantry import tier_moves, tiers
from tenantry.auth.api_keys import create_key
from tenantry.billing.dunning import enforce_past_due
from tenantry.billing.reporter import utcnow
from tenantry.client import connect
from tenantry.db.engine import Database
from tenantry.db.router import SCHEMA, SHARED, schema_name
from tenantry.errors import Conflict
from tenantry.services import Services
from tenantry.settings import Settings
from tenantry.tier_moves import MOVER, TierMover
from tests.billing.conftest import (
    Clock,
    in_process,
    make_tenant,
    new_customer,
    post_event,
    serve_app,
    stripe_event,
    subscription,
)
from tests.conftest import ADMIN_KEY, OPS, eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
_PUT = text(
    "INSERT INTO tenant_data (tenant_id, key, value, size_bytes) VALUES (:t, :k, CAST(:v AS jsonb), 1)"
    " ON CONFLICT (tenant_id, key) DO UPDATE SET value = excluded.value"
)


def _tiered(billing_settings: Settings) -> Settings:
    return billing_settings.model_copy(update={"plan_tiers": {"pro": SCHEMA}})


async def _subscribed(db: Database, plan: str = "free") -> tuple[uuid.UUID, str]:
    """A tenant billed through Stripe (customer and subscription), on the shared tier, with two rows."""
    customer = new_customer()
    tenant_id = await make_tenant(db, customer=customer, plan=plan, stripe_subscription_id=f"sub_{customer}")
    async with db.tenant(tenant_id) as conn:
        for key in ("a", "b"):
            await conn.execute(_PUT, {"t": tenant_id, "k": key, "v": f'"{key}"'})
    return tenant_id, customer


async def _change_plan(client: httpx.AsyncClient, customer: str, plan: str) -> dict[str, Any]:
    r = await post_event(client, stripe_event("customer.subscription.updated", subscription(customer, plan=plan)))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _tier(client: httpx.AsyncClient, tenant_id: uuid.UUID) -> dict[str, Any]:
    r = await client.get(f"/api/tenants/{tenant_id}/tier", headers=ADMIN)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _rows(db: Database, tenant_id: uuid.UUID) -> dict[str, Any]:
    async with db.tenant(tenant_id) as conn:
        return {r.key: r.value for r in await conn.execute(text("SELECT key, value FROM tenant_data ORDER BY key"))}


@asynccontextmanager
async def _app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    async with in_process(settings) as (client, services):
        yield client, services


async def test_an_upgrade_to_a_plan_on_another_tier_moves_the_tenant_after_the_webhook_answered(
    billing_settings: Settings, db: Database
) -> None:
    settings = _tiered(billing_settings)
    tenant_id, customer = await _subscribed(db)
    async with _app(settings) as (client, services):
        assert (await _change_plan(client, customer, "pro"))["outcome"] == "subscription:active:pro"
        # The webhook answered without moving anything (no mover runs in this app): the move is due.
        pending = await _tier(client, tenant_id)
        assert pending["tier"] == SHARED
        assert pending["plan_move"] == {
            "tenant_id": str(tenant_id),
            "from": SHARED,
            "tier": SCHEMA,
            "state": "pending",
            "attempts": 0,
            "last_error": None,
            "next_attempt_at": None,
        }
        run = await services.billing.mover.run_once(tenant_id)  # type: ignore[union-attr]
        assert run.moved == [str(tenant_id)]
        moved = await _tier(client, tenant_id)
        assert (moved["tier"], moved["name"], moved["plan_move"]) == (SCHEMA, schema_name(tenant_id), None)
        assert await _rows(services.db, tenant_id) == {"a": "a", "b": "b"}
        # In the tenant's trail, where it now lives, as an admin's move would be: who, from where, to where.
        (record,) = await _move_records(services.db, tenant_id)
        assert (record.transport, record.subject, record.decision, record.outcome) == (
            "system",
            MOVER,
            "admitted",
            "ok",
        )
        assert record.detail["changes"]["tier"] == {"before": SHARED, "after": SCHEMA}
        assert record.detail["changes"]["rows_copied"] == {"before": None, "after": 2}
        assert services.billing.mover.unrecorded == 0  # type: ignore[union-attr]


async def _move_records(db: Database, tenant_id: uuid.UUID) -> list[Any]:
    async with db.tenant(tenant_id) as conn:
        rows = await conn.execute(
            text(
                "SELECT transport, subject, decision, outcome, detail FROM audit_records"
                " WHERE method = 'system tenant.tier_move' ORDER BY seq"
            )
        )
        return list(rows)


async def test_a_move_whose_record_cannot_be_written_is_done_and_counted_as_a_lost_record(
    billing_settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(*args: Any, **kwargs: Any) -> None:
        raise OSError("the trail is out of reach")

    monkeypatch.setattr(tier_moves, "record_change", refused)
    settings = _tiered(billing_settings)
    tenant_id, customer = await _subscribed(db)
    async with _app(settings) as (client, services):
        await _change_plan(client, customer, "pro")
        mover = services.billing.mover  # type: ignore[union-attr]
        run = await mover.run_once(tenant_id)
        assert (run.moved, run.failed) == ([str(tenant_id)], [])  # done, not failed nor due again
        assert (await _tier(client, tenant_id))["plan_move"] is None
        assert mover.unrecorded == 1
        health = (await client.get("/health", headers=OPS)).json()
        assert health["checks"]["audit"]["lost_records"] >= 1


async def test_a_replayed_or_repeated_plan_event_moves_nothing_a_second_time(
    billing_settings: Settings, db: Database
) -> None:
    settings = _tiered(billing_settings)
    tenant_id, customer = await _subscribed(db)
    payload = stripe_event("customer.subscription.updated", subscription(customer, plan="pro"))
    async with _app(settings) as (client, services):
        mover = services.billing.mover  # type: ignore[union-attr]
        assert (await post_event(client, payload)).status_code == 200
        assert (await mover.run_once(tenant_id)).moved == [str(tenant_id)]
        before = await _tier(client, tenant_id)
        replayed = await post_event(client, payload)  # Stripe's redelivery of the same event
        assert replayed.json() == {"received": True, "duplicate": True}
        again = await _change_plan(client, customer, "pro")  # a new event for the same plan
        assert again["outcome"] == "subscription:active:pro"
        second = await mover.run_once(tenant_id)
        assert (second.moved, second.failed) == ([], [])
        assert await _tier(client, tenant_id) == before  # same copy, same old copy kept
        assert await _rows(services.db, tenant_id) == {"a": "a", "b": "b"}


async def test_a_downgrade_cleans_up_the_fenced_old_copy_first_and_moves_back_to_shared(
    billing_settings: Settings, db: Database
) -> None:
    settings = _tiered(billing_settings)
    tenant_id, customer = await _subscribed(db)
    async with _app(settings) as (client, services):
        mover = services.billing.mover  # type: ignore[union-attr]
        await _change_plan(client, customer, "pro")
        await mover.run_once(tenant_id)
        async with services.db.tenant(tenant_id) as conn:  # written on the schema tier only
            await conn.execute(_PUT, {"t": tenant_id, "k": "c", "v": '"c"'})
        assert (await _tier(client, tenant_id))["retired"] == {"tier": SHARED, "name": None}
        await _change_plan(client, customer, "free")
        assert (await mover.run_once(tenant_id)).moved == [str(tenant_id)]
        back = await _tier(client, tenant_id)
        assert (back["tier"], back["retired"]["tier"], back["plan_move"]) == (SHARED, SCHEMA, None)
        assert await _rows(services.db, tenant_id) == {"a": "a", "b": "b", "c": "c"}


async def test_an_old_copy_that_is_not_safe_to_drop_is_kept_and_the_move_reported_as_failing(
    billing_settings: Settings, db: Database
) -> None:
    settings = _tiered(billing_settings)
    tenant_id, customer = await _subscribed(db)
    async with _app(settings) as (client, services):
        mover = services.billing.mover  # type: ignore[union-attr]
        await _change_plan(client, customer, "pro")
        await mover.run_once(tenant_id)
        async with db.system() as conn:  # someone lifted the old shared copy's fence by hand
            await conn.execute(text("UPDATE tenant_storage SET moved = false WHERE tenant_id = :t"), {"t": tenant_id})
        await _change_plan(client, customer, "free")
        assert (await mover.run_once(tenant_id)).failed == [str(tenant_id)]
        state = await _tier(client, tenant_id)
        assert state["tier"] == SCHEMA  # still served where it was
        assert (state["plan_move"]["state"], state["plan_move"]["attempts"]) == ("retrying", 1)
        assert state["plan_move"]["last_error"].startswith("cleanup_pending: the old copy of the last move is kept")
        assert await _rows(services.db, tenant_id) == {"a": "a", "b": "b"}
        async with db.system() as conn:
            old = await conn.execute(text("SELECT count(*) FROM tenant_data WHERE tenant_id = :t"), {"t": tenant_id})
            assert old.scalar_one() == 2  # the old copy is untouched


async def test_a_failing_move_is_retried_with_backoff_and_reported_until_it_succeeds(
    billing_settings: Settings, db: Database, clock: Clock
) -> None:
    settings = _tiered(billing_settings)
    tenant_id, customer = await _subscribed(db)
    schema = schema_name(tenant_id)
    async with db.system() as conn:  # what stands in the way: a schema of that name with a foreign table
        await conn.execute(text(f"CREATE SCHEMA {schema}"))
        await conn.execute(text(f"CREATE TABLE {schema}.tenant_data (x int)"))
    async with _app(settings) as (client, services):
        mover = TierMover(settings, services.db, clock=clock)
        await _change_plan(client, customer, "pro")
        assert (await mover.run_once(tenant_id)).failed == [str(tenant_id)]
        state = (await _tier(client, tenant_id))["plan_move"]
        assert (state["state"], state["attempts"], state["tier"]) == ("retrying", 1, SCHEMA)
        assert state["last_error"].startswith("ProgrammingError: ")
        assert "already exists" in state["last_error"]
        health = await client.get("/health", params={"tenant": str(tenant_id)}, headers=OPS)
        checks = health.json()["checks"]
        assert health.status_code == 503  # this tenant's health: its move is failing
        assert checks["tier_move"]["status"] == "fail"
        assert checks["tier_move"]["attempts"] == 1
        assert str(tenant_id) in {m["tenant_id"] for m in checks["tier_moves"]["failing"]}
        # The replica's own health stays ok: one tenant's stuck move takes no replica out of its balancer.
        plain = await client.get("/health", headers=OPS)
        moves = plain.json()["checks"]["tier_moves"]
        assert str(tenant_id) in {m["tenant_id"] for m in moves["failing"]}
        assert moves["failing_count"] >= 1
        assert moves["status"] == "ok"
        assert (await mover.run_once(tenant_id)).deferred == 1  # backing off: not tried again at once
        assert await _rows(services.db, tenant_id) == {"a": "a", "b": "b"}  # still served on shared

        clock.advance(seconds=6)
        assert (await mover.run_once(tenant_id)).failed == [str(tenant_id)]  # tried again, failed again
        assert (await _tier(client, tenant_id))["plan_move"]["attempts"] == 2
        async with db.system() as conn:
            await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        clock.advance(seconds=11)
        assert (await mover.run_once(tenant_id)).moved == [str(tenant_id)]
        done = await _tier(client, tenant_id)
        assert (done["tier"], done["plan_move"]) == (SCHEMA, None)
        health = await client.get("/health", params={"tenant": str(tenant_id)}, headers=OPS)
        assert health.json()["checks"]["tier_move"] == {"status": "ok", "due": False}
        assert await _rows(services.db, tenant_id) == {"a": "a", "b": "b"}


async def test_dunnings_restriction_to_a_cheaper_plan_moves_no_data(billing_settings: Settings, db: Database) -> None:
    settings = _tiered(billing_settings)
    tenant_id, customer = await _subscribed(db)
    async with _app(settings) as (client, services):
        mover = services.billing.mover  # type: ignore[union-attr]
        await _change_plan(client, customer, "pro")
        await mover.run_once(tenant_id)
        failed = stripe_event("invoice.payment_failed", {"object": "invoice", "customer": customer})
        assert (await post_event(client, failed)).status_code == 200
        async with db.system() as conn:  # the grace period is over: restricted to the past-due plan
            restricted = await enforce_past_due(conn, settings, utcnow() + timedelta(days=30))
        assert tenant_id in restricted
        run = await mover.run_once(tenant_id)
        assert (run.moved, run.failed) == ([], [])
        state = await _tier(client, tenant_id)
        assert (state["tier"], state["wanted"], state["plan_move"]) == (SCHEMA, SCHEMA, None)


async def test_the_mover_never_takes_over_a_move_someone_else_started(billing_settings: Settings, db: Database) -> None:
    settings = _tiered(billing_settings)
    tenant_id, customer = await _subscribed(db)
    async with _app(settings) as (client, services):
        await _change_plan(client, customer, "pro")
        async with db.system() as conn:  # an admin's move has claimed the tenant meanwhile
            await conn.execute(text("UPDATE tenants SET moving_since = now() WHERE id = :t"), {"t": tenant_id})
        try:
            with pytest.raises(Conflict) as refused:
                await tiers.move_tenant(services.db, settings, tenant_id, SCHEMA, unless_moving=True)
            assert refused.value.code == "tenant_moving"
            run = await services.billing.mover.run_once(tenant_id)  # type: ignore[union-attr]
            assert (run.moved, run.failed) == ([], [])  # not due while a move runs
        finally:
            async with db.system() as conn:
                await conn.execute(text("UPDATE tenants SET moving_since = NULL WHERE id = :t"), {"t": tenant_id})
        assert (await _tier(client, tenant_id))["tier"] == SHARED


async def test_through_the_running_gateway_the_webhook_wakes_the_mover_and_calls_work_after(
    billing_settings: Settings, db: Database
) -> None:
    settings = _tiered(billing_settings).model_copy(update={"tier_move_interval_seconds": 3600})
    tenant_id, customer = await _subscribed(db)
    async with db.system() as conn:
        _, secret = await create_key(conn, tenant_id, "k")
    headers = {"Tenant-ID": str(tenant_id), "Authorization": f"Bearer {secret}"}
    with serve_app(settings) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await _change_plan(client, customer, "pro"))["outcome"] == "subscription:active:pro"
            # The interval is an hour: only the webhook's wake-up can have run the move this soon.
            await eventually(lambda: _on(client, tenant_id, SCHEMA), within=20, what="the move to the schema tier")
        async with connect(f"{url}/mcp", headers) as mcp:
            got = await mcp.call_tool("data_get", {"key": "a"})
            put = await mcp.call_tool("data_put", {"key": "after", "value": 1})
        assert not got.is_error
        assert got.structured_content["value"] == "a"
        assert not put.is_error
    async with db.system() as conn:
        path = text(f"SELECT count(*) FROM {schema_name(tenant_id)}.tenant_data WHERE tenant_id = :t")
        assert (await conn.execute(path, {"t": tenant_id})).scalar_one() == 3


async def _on(client: httpx.AsyncClient, tenant_id: uuid.UUID, tier: str) -> bool:
    return (await _tier(client, tenant_id))["tier"] == tier
