"""The usage ledger against the real Redis and PostgreSQL: drained once, replayed without duplicates,
taken over from a dead consumer, written to PostgreSQL when Redis is down."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from tenantry.db.engine import Database
from tenantry.metering.ledger import GROUP, Ledger, LedgerDrainer, UsageEvent, insert_events, oldest_undrained_age_ms
from tenantry.settings import Settings
from tests.conftest import Admin
from tests.metering.test_meter import closed_port, unreachable_client


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def stream() -> str:
    return f"tenantry-ledger-test:{uuid.uuid4().hex}:{{ledger}}"


def event(tenant_id: str, n: int = 0, at_ms: int = 1_800_000_000_000) -> UsageEvent:
    return UsageEvent(uuid.uuid4(), uuid.UUID(tenant_id), "data_get", 1, "ok", 1.5, at_ms + n)


async def stored(db: Database, tenant_id: str) -> list[uuid.UUID]:
    async with db.system() as conn:
        rows = await conn.execute(
            text("SELECT event_id FROM usage_events WHERE tenant_id = :t ORDER BY occurred_at"),
            {"t": uuid.UUID(tenant_id)},
        )
        return list(rows.scalars())


async def test_recorded_events_are_drained_into_postgres_once(
    redis: Redis, db: Database, admin: Admin, stream: str
) -> None:
    tenant = await admin.create_tenant()
    ledger = Ledger(redis, db, stream=stream)
    events = [event(tenant.id, n) for n in range(5)]
    for e in events:
        await ledger.record(e)
    assert await oldest_undrained_age_ms(redis, stream) > 0
    drainer = LedgerDrainer(redis, db, stream=stream)
    await drainer.flush()
    assert await stored(db, tenant.id) == [e.event_id for e in events]
    assert await redis.xlen(stream) == 0
    assert await oldest_undrained_age_ms(redis, stream) == 0
    # A replay of the same events (a crash after the commit, before the acknowledgement) adds nothing.
    assert await insert_events(db, events) == 0
    assert len(await stored(db, tenant.id)) == 5


async def test_a_dead_consumers_unacknowledged_events_are_taken_over(
    redis: Redis, db: Database, admin: Admin, stream: str
) -> None:
    tenant = await admin.create_tenant()
    ledger = Ledger(redis, db, stream=stream)
    events = [event(tenant.id, n) for n in range(3)]
    for e in events:
        await ledger.record(e)
    dead = LedgerDrainer(redis, db, stream=stream, consumer="dead")
    await dead.ensure_group()
    # The dead consumer read the batch and died before storing it.
    await redis.xreadgroup(GROUP, "dead", {stream: ">"}, count=10)
    heir = LedgerDrainer(redis, db, stream=stream, consumer="heir", claim_idle_ms=0)
    await heir.flush()
    assert await stored(db, tenant.id) == [e.event_id for e in events]
    assert (await redis.xpending(stream, GROUP))["pending"] == 0


async def test_with_redis_down_an_event_goes_straight_to_postgres(db: Database, admin: Admin) -> None:
    tenant = await admin.create_tenant()
    down = unreachable_client(closed_port())
    try:
        ledger = Ledger(down, db, stream="unused:{ledger}")
        e = event(tenant.id)
        await ledger.record(e)
    finally:
        await down.aclose()
    assert ledger.fallbacks == 1
    assert await stored(db, tenant.id) == [e.event_id]


async def test_the_app_role_cannot_rewrite_or_delete_usage_events(db: Database, admin: Admin) -> None:
    tenant = await admin.create_tenant()
    await insert_events(db, [event(tenant.id)])
    for statement in ("UPDATE usage_events SET units = 0", "DELETE FROM usage_events"):
        with pytest.raises(Exception, match="permission denied"):
            async with db.tenant(uuid.UUID(tenant.id)) as conn:
                await conn.execute(text(statement))
    assert len(await stored(db, tenant.id)) == 1
