"""The gateway through PgBouncer in transaction pooling mode: what a pooler that hands a server
connection to whoever comes next could break (named prepared statements, tenant bindings, the
reporter's lock, LISTEN, migrations) does not break. Tests whose bodies live elsewhere are imported and
run here again with this package's `settings` (every pooled connection through PgBouncer).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager

import asyncpg
import httpx
import pytest
from sqlalchemy import TextClause, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.app import create_app
from tenantry.billing.reporter import LOCK_KEY, Reporter
from tenantry.billing.stripe_client import StripeBilling
from tenantry.cli.serve import cmd_migrate
from tenantry.db.engine import Database
from tenantry.db.listener import listener_dsn
from tenantry.settings import Settings
from tests.billing.conftest import Clock, billing_settings, clock, make_tenant, new_customer, record, stripe_fake
from tests.billing.fake_stripe import FakeStripe
from tests.billing.test_reporter import (
    test_billed_units_equal_successful_events_per_tenant,
    test_only_one_reporter_runs_at_a_time,
)
from tests.conftest import Admin, TenantHandle, serve_asgi
from tests.db.test_rls import _seed
from tests.federation.test_changes import (
    test_another_replica_sees_upstreams_added_and_removed_through_the_first_ones_api,
    test_offboarding_a_tenant_closes_its_upstream_sessions_on_every_replica,
    test_the_listener_recovers_from_a_killed_connection_and_forgets_what_it_may_have_missed,
)
from tests.metering.conftest import redis, stream
from tests.metering.test_drain import (
    drain_client,
    test_one_batch_of_many_tenants_lands_each_event_under_its_own_tenant,
    test_recorded_events_are_drained_into_postgres_once,
    test_the_running_drainer_moves_events_recorded_while_it_blocks,
)
from tests.pgbouncer.server import run_pgbouncer, through
from tests.test_tenants import (
    LONG_TTL,
    test_a_tenant_suspended_through_one_replica_is_refused_by_another_within_a_second,
    test_limits_changed_by_hand_in_sql_reach_a_running_gateway_within_a_second,
    test_the_replica_that_makes_a_change_applies_it_to_the_very_next_request,
)

__all__ = [
    "billing_settings",
    "clock",
    "drain_client",
    "redis",
    "stream",
    "stripe_fake",
    "test_a_tenant_suspended_through_one_replica_is_refused_by_another_within_a_second",
    "test_another_replica_sees_upstreams_added_and_removed_through_the_first_ones_api",
    "test_billed_units_equal_successful_events_per_tenant",
    "test_limits_changed_by_hand_in_sql_reach_a_running_gateway_within_a_second",
    "test_offboarding_a_tenant_closes_its_upstream_sessions_on_every_replica",
    "test_one_batch_of_many_tenants_lands_each_event_under_its_own_tenant",
    "test_only_one_reporter_runs_at_a_time",
    "test_recorded_events_are_drained_into_postgres_once",
    "test_the_listener_recovers_from_a_killed_connection_and_forgets_what_it_may_have_missed",
    "test_the_replica_that_makes_a_change_applies_it_to_the_very_next_request",
    "test_the_running_drainer_moves_events_recorded_while_it_blocks",
]


@pytest.fixture
def replica(settings: Settings) -> Iterator[str]:
    """A second gateway through the same PgBouncer, trusting cached credentials for five minutes: only a
    change announcement, heard on its direct LISTEN connection, can explain a change it sees at once."""
    with serve_asgi(create_app(settings.model_copy(update={"auth_cache_ttl_seconds": LONG_TTL}))) as (url, _):
        yield url


@contextmanager
def own_pgbouncer(settings: Settings, servers: int) -> Iterator[Settings]:
    """`settings` through a PgBouncer of its own with `servers` server connections per role."""
    direct = settings.database_direct_url
    assert direct is not None
    with run_pgbouncer(direct, ["postgres", settings.db_app_role], pool_size=servers) as bouncer:
        yield through(settings.model_copy(update={"database_url": direct}), bouncer)


async def on_the_other_server(db: Database, holder: Database, query: TextClause) -> int:
    """Run `query` on `db` while `holder` keeps the server connection used last (PgBouncer hands out the
    most recently used one first), so that it runs on another server connection."""
    async with holder.system() as holding:
        await holding.execute(text("SELECT 1"))
        async with db.system() as conn:
            return int((await conn.execute(query, {"n": 2})).scalar_one())


async def test_without_the_pooler_setting_a_cached_statement_is_missing_on_the_next_server_connection(
    settings: Settings,
) -> None:
    query = text("SELECT CAST(:n AS int) + 1")
    with own_pgbouncer(settings, servers=2) as two:
        plain = Database(two.model_copy(update={"db_transaction_pooler": False}))
        pooled, holder = Database(two), Database(two)
        try:
            for db in (plain, pooled):  # prepared on server connection 1 (and cached by `plain`)
                async with db.system() as conn:
                    assert (await conn.execute(query, {"n": 1})).scalar_one() == 2
            with pytest.raises(DBAPIError, match=r"prepared statement \S+ does not exist"):
                await on_the_other_server(plain, holder, query)
            assert await on_the_other_server(pooled, holder, query) == 3
        finally:
            for db in (plain, pooled, holder):
                await db.dispose()


async def test_clients_taking_turns_on_one_server_connection_never_see_each_others_tenant(
    settings: Settings,
) -> None:
    tenants = [uuid.uuid4() for _ in range(3)]
    with own_pgbouncer(settings, servers=1) as one_server:
        await _take_turns(one_server, tenants)


async def _take_turns(one_server: Settings, tenants: list[uuid.UUID]) -> None:
    clients = [Database(one_server) for _ in tenants]
    try:
        for tenant, db in zip(tenants, clients, strict=True):
            await _seed(db, tenant, f"k-{tenant.hex[:6]}")

        async def sees(db: Database, tenant: uuid.UUID) -> list[str]:
            async with db.tenant(tenant) as conn:
                return list((await conn.execute(text("SELECT key FROM tenant_data"))).scalars())

        # Interleaved and concurrent: the transactions queue for the one server connection.
        for _ in range(2):
            seen = await asyncio.gather(*(sees(db, t) for db, t in zip(clients, tenants, strict=True)))
            assert seen == [[f"k-{t.hex[:6]}"] for t in tenants]
            for db in clients:  # whatever ran before on the server connection, nothing bound now
                async with db.unbound() as conn:
                    bound = await conn.execute(text("SELECT current_setting('tenantry.tenant_id', true)"))
                    assert bound.scalar() in ("", None)
                    assert (await conn.execute(text("SELECT count(*) FROM tenant_data"))).scalar_one() == 0
    finally:
        for db in clients:
            await db.dispose()


async def test_prepared_statements_do_not_pile_up_on_pgbouncers_server_connections(
    http: httpx.AsyncClient, admin: Admin, settings: Settings
) -> None:
    tenant: TenantHandle = await admin.create_tenant(plan="pro")
    bridge = f"/api/tenant/{tenant.id}/tool"
    for i in range(30):
        r = await http.post(
            bridge, headers=tenant.headers, json={"method": "data_put", "params": {"key": f"k{i}", "value": i}}
        )
        assert r.status_code == 200, r.text
    listed = await http.post(bridge, headers=tenant.headers, json={"method": "data_list"})
    assert len(listed.json()["structuredContent"]["keys"]) == 30
    # As many open transactions per role as PgBouncer has server connections: each sits on its own one.
    probe = Database(settings.model_copy(update={"db_pool_size": 8, "db_max_overflow": 0}))
    try:
        counts: list[int] = []
        ready = asyncio.Barrier(4)

        async def count(open_one: AbstractAsyncContextManager[AsyncConnection]) -> None:
            async with open_one as conn:
                counts.append((await conn.execute(text("SELECT count(*) FROM pg_prepared_statements"))).scalar_one())
                await ready.wait()

        await asyncio.gather(*(count(probe.unbound()) for _ in range(4)))
        ready = asyncio.Barrier(4)
        await asyncio.gather(*(count(probe.system()) for _ in range(4)))
    finally:
        await probe.dispose()
    assert counts == [0] * 8


async def test_two_reporters_through_pgbouncer_bill_once_and_only_one_runs_at_a_time(
    billing_settings: Settings, stripe_fake: FakeStripe, clock: Clock
) -> None:
    # Two replicas' reporters, each with its own pools through PgBouncer.
    first, second = Database(billing_settings), Database(billing_settings)
    try:
        customer = new_customer()
        stripe_fake.customers.add(customer)
        tenant = await make_tenant(first, customer=customer)
        units = await record(first, tenant, 5, 2)
        inside, go_on = asyncio.Event(), asyncio.Event()

        async def pause(point: str) -> None:
            if point == "before_send":
                inside.set()
                await go_on.wait()

        holder = Reporter(billing_settings, first, StripeBilling(billing_settings), clock=clock, fault=pause)
        other = Reporter(billing_settings, second, StripeBilling(billing_settings), clock=clock)
        running = asyncio.create_task(holder.run_once([tenant]))
        await asyncio.wait_for(inside.wait(), 10)
        assert (await other.run_once([tenant])).locked is False  # the lock held in the first one's transaction
        go_on.set()
        run = await running
        assert (run.locked, run.sent, run.units_sent) == (True, 1, units)
        again = await other.run_once([tenant])
        assert (again.locked, again.sent) == (True, 0)
        assert stripe_fake.billed(customer) == units
        assert stripe_fake.requests == 1
        # The lock ended with its transaction: no server connection PgBouncer pools still holds it.
        direct = await asyncpg.connect(listener_dsn(billing_settings.direct_database_url))
        try:
            assert await direct.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
            await direct.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        finally:
            await direct.close()
    finally:
        await first.dispose()
        await second.dispose()


def test_migrations_go_straight_to_postgresql_not_through_the_pooler(settings: Settings) -> None:
    # Through PgBouncer they would fail at once: it serves no `postgres` database to check from.
    import argparse

    assert cmd_migrate(argparse.Namespace(downgrade=None, tenant=None, json=True), settings) == 0
