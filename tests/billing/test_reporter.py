"""Invariant 5: billed units equal successful calls, per tenant, after any crash, restart or Stripe failure."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tenantry.billing.reconcile import reconcile
from tenantry.billing.reporter import LOCK_KEY, MAX_EVENT_AGE, Reporter, backoff
from tenantry.billing.stripe_client import StripeBilling
from tenantry.db.engine import Database
from tenantry.settings import Settings
from tests.billing.conftest import Clock, make_tenant, new_customer, record, serve_app
from tests.billing.fake_stripe import FakeStripe


class Killed(Exception):
    """The reporter process died here."""


def reporter(settings: Settings, db: Database, clock: Clock, **kw: object) -> Reporter:
    return Reporter(settings, db, StripeBilling(settings), clock=clock, **kw)  # type: ignore[arg-type]


async def drain(r: Reporter, clock: Clock, tenants: list[uuid.UUID], rounds: int = 30) -> None:
    """Run cycles (moving the clock past any back-off) until a cycle has nothing left to send."""
    for _ in range(rounds):
        run = await r.run_once(tenants)
        if run.sent == 0 and run.deferred == 0 and run.reports_created == 0:
            return
        clock.advance(seconds=backoff(20).total_seconds())
    raise AssertionError("reporter did not settle")


async def test_billed_units_equal_successful_events_per_tenant(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe, clock: Clock
) -> None:
    customers = [new_customer(), new_customer()]
    stripe_fake.customers.update(customers)
    t1, t2 = [await make_tenant(db, customer=c) for c in customers]
    expected = {customers[0]: await record(db, t1, 7, 3), customers[1]: await record(db, t2, 2, 5, units=3)}

    run = await reporter(billing_settings, db, clock).run_once([t1, t2])
    assert run.sent == 2
    assert {c: stripe_fake.billed(c) for c in customers} == expected
    again = await reporter(billing_settings, db, clock).run_once([t1, t2])
    assert again.sent == 0
    assert stripe_fake.requests == 2


async def test_meter_event_identifier_and_payload_come_from_the_report_row(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe, clock: Clock
) -> None:
    customer = new_customer()
    stripe_fake.customers.add(customer)
    tenant = await make_tenant(db, customer=customer)
    await record(db, tenant, 4)
    await reporter(billing_settings, db, clock).run_once([tenant])
    async with db.system() as conn:
        report_id = (await conn.execute(text("SELECT id FROM usage_reports WHERE tenant_id = :t"), {"t": tenant})).one()
    (event,) = stripe_fake.events.values()
    assert event["identifier"] == f"tenantry-{report_id.id}"
    assert event["event_name"] == billing_settings.billing_meter_event_name
    assert event["payload"] == {"stripe_customer_id": customer, "value": "4"}


@pytest.mark.parametrize("seed", range(6))
async def test_reporter_killed_at_random_points_and_restarted_bills_exactly_once(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe, clock: Clock, seed: int
) -> None:
    rng = random.Random(seed)
    customers = [new_customer() for _ in range(3)]
    stripe_fake.customers.update(customers)
    tenant_ids = [await make_tenant(db, customer=c) for c in customers]
    expected = dict.fromkeys(customers, 0)
    points = ["after_aggregate", "before_send", "after_send", "after_mark"]

    for _ in range(8):
        for tenant_id, customer in zip(tenant_ids, customers, strict=True):
            expected[customer] += await record(db, tenant_id, rng.randint(0, 4), rng.randint(0, 2))
        doomed = rng.choice(points)
        kind: type[BaseException] = rng.choice([Killed, asyncio.CancelledError])

        async def fault(point: str, doomed: str = doomed, kind: type[BaseException] = kind) -> None:
            if point == doomed and rng.random() < 0.7:
                raise kind(point)

        for _ in range(5):  # a few cycles of a reporter that dies at `doomed` (or, by chance, survives)
            try:
                await reporter(billing_settings, db, clock, fault=fault).run_once(tenant_ids)
            except (Killed, asyncio.CancelledError):
                break

    await drain(reporter(billing_settings, db, clock), clock, tenant_ids)
    assert {c: stripe_fake.billed(c) for c in customers} == expected
    async with db.system() as conn:
        rows = [r for t in tenant_ids for r in await reconcile(conn, t)]
    assert all(r["difference"] == 0 for r in rows), rows


async def test_stripe_failing_mid_batch_backs_off_and_then_bills_exactly_once(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe, clock: Clock
) -> None:
    customers = [new_customer() for _ in range(4)]
    stripe_fake.customers.update(customers)
    tenant_ids = [await make_tenant(db, customer=c) for c in customers]
    expected = {c: await record(db, t, i + 2, 1) for i, (t, c) in enumerate(zip(tenant_ids, customers, strict=True))}
    r = reporter(billing_settings, db, clock)

    stripe_fake.fail_next("ok", "500")
    first = await r.run_once(tenant_ids)
    assert (first.sent, first.deferred) == (1, 1)
    # The rows not yet tried go next cycle; the failed one waits out its back-off.
    second = await r.run_once(tenant_ids)
    assert (second.sent, second.deferred) == (2, 0)
    assert (await r.run_once(tenant_ids)).sent == 0
    for failure in ("drop", "429", "timeout"):
        clock.advance(seconds=backoff(20).total_seconds())
        stripe_fake.fail_next(failure)
        run = await r.run_once(tenant_ids)
        assert run.deferred == 1, (failure, run)
    await drain(r, clock, tenant_ids)
    assert {c: stripe_fake.billed(c) for c in customers} == expected


async def test_unknown_customer_parks_the_row_and_other_tenants_are_still_billed(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe, clock: Clock
) -> None:
    known, unknown = new_customer(), new_customer()
    stripe_fake.customers.add(known)
    bad = await make_tenant(db, customer=unknown)
    good = await make_tenant(db, customer=known)
    await record(db, bad, 3)
    expected = await record(db, good, 5)

    run = await reporter(billing_settings, db, clock).run_once([bad, good])
    assert (run.parked, run.sent) == (1, 1)
    assert stripe_fake.billed(known) == expected
    await record(db, bad, 2)
    await record(db, good, 1)
    again = await reporter(billing_settings, db, clock).run_once([bad, good])
    assert (again.parked, again.sent) == (0, 1)  # the parked tenant is not retried blindly
    async with db.system() as conn:
        parked = (
            await conn.execute(text("SELECT status, last_error FROM usage_reports WHERE tenant_id = :t"), {"t": bad})
        ).all()
        (row,) = await reconcile(conn, bad)
    assert [p.status for p in parked] == ["parked"]
    assert "No such customer" in (parked[0].last_error or "")
    assert (row["parked_units"], row["unreported_units"], row["difference"]) == (3, 2, 5)


async def test_tenant_without_customer_is_recorded_but_not_reported_visibly(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe, clock: Clock
) -> None:
    tenant = await make_tenant(db, customer=None)
    await record(db, tenant, 4, 1)
    run = await reporter(billing_settings, db, clock).run_once([tenant])
    assert run.sent == 0
    assert stripe_fake.requests == 0
    async with db.system() as conn:
        (row,) = await reconcile(conn, tenant)
    assert row["billable"] is False
    assert (row["ledger_units"], row["unreported_units"], row["difference"], row["failed_calls"]) == (4, 4, 4, 1)


async def test_only_one_reporter_runs_at_a_time(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe, clock: Clock
) -> None:
    customer = new_customer()
    stripe_fake.customers.add(customer)
    tenant = await make_tenant(db, customer=customer)
    await record(db, tenant, 2)
    async with db.system() as other_replica:
        await other_replica.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        run = await reporter(billing_settings, db, clock).run_once([tenant])
    assert run.locked is False
    assert stripe_fake.requests == 0
    assert (await reporter(billing_settings, db, clock).run_once([tenant])).sent == 1


async def test_meter_event_timestamp_is_never_older_than_stripe_accepts(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe, clock: Clock
) -> None:
    customer = new_customer()
    stripe_fake.customers.add(customer)
    tenant = await make_tenant(db, customer=customer)
    await record(db, tenant, 3, at=datetime.now(UTC) - timedelta(days=60))
    await reporter(billing_settings, db, clock).run_once([tenant])
    (event,) = stripe_fake.events.values()
    assert event["timestamp"] >= int((clock.now - MAX_EVENT_AGE).timestamp())
    assert event["timestamp"] <= int(clock.now.timestamp())


async def test_tools_mapped_to_other_meters_get_their_own_meter_events(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe, clock: Clock
) -> None:
    customer = new_customer()
    stripe_fake.customers.add(customer)
    tenant = await make_tenant(db, customer=customer)
    await record(db, tenant, 3, tool="data_put")
    await record(db, tenant, 2, tool="data_get")
    mapped = billing_settings.model_copy(update={"billing_tool_meters": {"data_get": "tenantry_reads"}})
    await reporter(mapped, db, clock).run_once([tenant])
    by_meter = {e["event_name"]: int(e["payload"]["value"]) for e in stripe_fake.events.values()}
    assert by_meter == {"tenantry_tool_calls": 3, "tenantry_reads": 2}


async def test_the_gateway_runs_the_reporter_as_a_lifespan_task(
    billing_settings: Settings, db: Database, stripe_fake: FakeStripe
) -> None:
    customer = new_customer()
    stripe_fake.customers.add(customer)
    tenant = await make_tenant(db, customer=customer)
    units = await record(db, tenant, 4, 1)
    running = billing_settings.model_copy(
        update={"billing_reporter_enabled": True, "billing_report_interval_seconds": 0.05}
    )
    waiting = threading.Event()
    with serve_app(running):
        for _ in range(500):  # bounded: at most 5 s
            if stripe_fake.billed(customer) == units:
                break
            waiting.wait(0.01)
    assert stripe_fake.billed(customer) == units
