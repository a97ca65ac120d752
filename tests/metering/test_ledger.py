"""The usage ledger against the real Redis and PostgreSQL: drained once, replayed without duplicates,
taken over from a dead consumer, written to PostgreSQL when Redis is down."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import Database
from tenantry.metering.drain import GROUP, LedgerDrainer, dead_letter_key, oldest_undrained_age_ms
from tenantry.metering.ledger import Ledger, UsageEvent, insert_events, unstorable
from tenantry.metering.resp import RespClient
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
async def stream(redis: Redis) -> AsyncIterator[str]:
    """A stream of the test's own, removed afterwards with its dead-letter stream."""
    key = f"tenantry-ledger-test:{uuid.uuid4().hex}:{{ledger}}"
    yield key
    await redis.delete(key, dead_letter_key(key))


def event(tenant_id: str, n: int = 0, at_ms: int = 1_800_000_000_000) -> UsageEvent:
    return UsageEvent(uuid.uuid4(), uuid.UUID(tenant_id), "data_get", 1, "ok", 1.5, at_ms + n)


async def stored(db: Database, tenant_id: str) -> list[uuid.UUID]:
    async with db.system() as conn:
        rows = await conn.execute(
            text("SELECT event_id FROM usage_events WHERE tenant_id = :t ORDER BY occurred_at"),
            {"t": uuid.UUID(tenant_id)},
        )
        return list(rows.scalars())


@pytest.fixture(params=["redis-py", "lean"])
async def drain_client(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[RespClient | None]:
    """The drainer's steady-state client: redis-py, or its own lean connection (what the app uses)."""
    if request.param == "redis-py":
        yield None
        return
    client = RespClient.from_url(settings.redis_url, timeout=5.0)
    try:
        yield client
    finally:
        await client.aclose()


async def test_recorded_events_are_drained_into_postgres_once(
    redis: Redis, db: Database, admin: Admin, stream: str, drain_client: RespClient | None
) -> None:
    tenant = await admin.create_tenant()
    ledger = Ledger(redis, db, stream=stream)
    events = [event(tenant.id, n) for n in range(5)]
    for e in events:
        await ledger.record(e)
    # Undrained events have an age (asked a second later: within one millisecond it could be 0).
    assert await oldest_undrained_age_ms(redis, stream, now_ms=int(time.time() * 1000) + 1000) >= 1000
    drainer = LedgerDrainer(redis, db, stream=stream, resp=drain_client)
    await drainer.flush()
    assert await stored(db, tenant.id) == [e.event_id for e in events]
    assert await redis.xlen(stream) == 0
    assert await oldest_undrained_age_ms(redis, stream) == 0
    # A replay of the same events (a crash after the commit, before the acknowledgement) adds nothing.
    assert await insert_events(db, events) == 0
    assert len(await stored(db, tenant.id)) == 5


async def test_the_running_drainer_moves_events_recorded_while_it_blocks(
    redis: Redis, db: Database, admin: Admin, stream: str, drain_client: RespClient | None
) -> None:
    tenant = await admin.create_tenant()
    drainer = LedgerDrainer(redis, db, stream=stream, resp=drain_client, block_ms=200, linger_ms=10)
    task = asyncio.create_task(drainer.run())
    try:
        await asyncio.sleep(0.3)  # let it reach its blocking read of new entries
        ledger = Ledger(redis, db, stream=stream)
        events = [event(tenant.id, n) for n in range(120)]
        for e in events:
            await ledger.record(e)
        async with asyncio.timeout(10):
            while len(await stored(db, tenant.id)) < len(events):  # noqa: ASYNC110 (polling the database)
                await asyncio.sleep(0.05)
    finally:
        drainer.stop()
        await task
    assert sorted(await stored(db, tenant.id)) == sorted(e.event_id for e in events)
    assert await redis.xlen(stream) == 0
    assert (await redis.xpending(stream, GROUP))["pending"] == 0


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


async def test_one_batch_of_many_tenants_lands_each_event_under_its_own_tenant(
    redis: Redis, db: Database, admin: Admin, stream: str, drain_client: RespClient | None
) -> None:
    tenants = [await admin.create_tenant() for _ in range(3)]
    ledger = Ledger(redis, db, stream=stream)
    events = [event(tenants[n % 3].id, n) for n in range(30)]  # interleaved, as calls arrive
    for e in events:
        await ledger.record(e)
    drainer = LedgerDrainer(redis, db, stream=stream, resp=drain_client)
    await drainer.ensure_group()
    assert await drainer.drain_once(recover=False) == 30  # one batch
    for tenant in tenants:
        own = [e.event_id for e in events if str(e.tenant_id) == tenant.id]
        assert await stored(db, tenant.id) == own
        # What RLS shows the tenant is its ten events and nothing of the others'.
        async with db.tenant(uuid.UUID(tenant.id)) as conn:
            visible = (await conn.execute(text("SELECT count(*), count(DISTINCT tenant_id) FROM usage_events"))).one()
        assert tuple(visible) == (10, 1)
    assert drainer.drained == 30


async def test_the_stored_event_is_the_recorded_one(redis: Redis, db: Database, admin: Admin, stream: str) -> None:
    tenant = await admin.create_tenant()
    e = UsageEvent(
        uuid.uuid4(), uuid.UUID(tenant.id), 'we"ird\\tool', 20, "upstream_tool_error", 12.3456, 1_800_000_000_123, False
    )
    await Ledger(redis, db, stream=stream).record(e)
    await LedgerDrainer(redis, db, stream=stream).flush()
    async with db.system() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT tool, units, outcome, latency_ms, metered, "
                    "(extract(epoch FROM occurred_at) * 1000)::bigint AS at_ms FROM usage_events WHERE event_id = :e"
                ),
                {"e": e.event_id},
            )
        ).one()
    assert tuple(row) == ('we"ird\\tool', 20, "upstream_tool_error", 12.346, False, 1_800_000_000_123)


async def test_entries_that_can_never_be_stored_are_set_aside_and_the_rest_drain(
    redis: Redis, db: Database, admin: Admin, stream: str, drain_client: RespClient | None
) -> None:
    tenant = await admin.create_tenant()
    ledger = Ledger(redis, db, stream=stream)
    good = [event(tenant.id, n) for n in range(3)]
    for e in good[:2]:
        await ledger.record(e)
    # An entry a gateway before migration 0006 wrote: eight fields. It is still a usage event.
    old = event(tenant.id, 7)
    legacy = {"e": str(old.event_id), "t": tenant.id, "tool": "data_get", "u": "1", "o": "ok", "l": "1.5",
              "at": str(old.occurred_at_ms), "m": "1"}  # fmt: skip
    await redis.xadd(stream, legacy)  # type: ignore[arg-type]
    poison: list[dict[str, str]] = [
        {"junk": "x"},
        {"t": "not-a-uuid", "v": good[2].document()},
        {"t": tenant.id, "v": '{"e": "truncated'},
        # Well formed, but the tenant does not exist: PostgreSQL refuses it (foreign key).
        {"t": str(uuid.uuid4()), "v": event(tenant.id, 9).document()},
    ]
    for fields in poison:
        await redis.xadd(stream, fields)  # type: ignore[arg-type]
    await ledger.record(good[2])
    drainer = LedgerDrainer(redis, db, stream=stream, resp=drain_client)
    await drainer.flush()
    assert sorted(await stored(db, tenant.id)) == sorted([*(e.event_id for e in good), old.event_id])
    assert await redis.xlen(stream) == 0
    assert (await redis.xpending(stream, GROUP))["pending"] == 0
    assert drainer.dead_lettered == 4
    assert drainer.drained == 4  # the three recorded and the old-format one
    kept = await redis.xrange(dead_letter_key(stream))
    assert [{k: v for k, v in fields.items() if k not in (b"entry", b"reason")} for _, fields in kept] == [
        {k.encode(): v.encode() for k, v in fields.items()} for fields in poison
    ]
    reasons = [fields[b"reason"].decode() for _, fields in kept]
    assert all(reason.startswith("not a usage event") for reason in reasons[:3])
    assert "foreign key" in reasons[3]


async def test_the_record_function_refuses_arrays_that_do_not_line_up(db: Database, admin: Admin) -> None:
    tenant = await admin.create_tenant()
    docs = [event(tenant.id, n).document() for n in range(2)]
    bad = [([tenant.id], [1], docs), ([tenant.id], [2, 1], docs), ([tenant.id], [0], []), ([], [], docs)]
    for tenants, counts, events in bad:
        with pytest.raises(DBAPIError, match="do not line up") as caught:
            async with db.unbound() as conn:
                await conn.execute(
                    text("SELECT tenantry_record_usage(CAST(:t AS uuid[]), CAST(:c AS integer[]), CAST(:e AS json[]))"),
                    {"t": [uuid.UUID(t) for t in tenants], "c": counts, "e": events},
                )
        assert unstorable(caught.value)
    assert await stored(db, tenant.id) == []


async def test_a_missing_grant_stalls_the_drain_instead_of_setting_events_aside(
    redis: Redis, db: Database, admin: Admin, stream: str, settings: Settings
) -> None:
    tenant = await admin.create_tenant()
    events = [event(tenant.id, n) for n in range(3)]
    ledger = Ledger(redis, db, stream=stream)
    for e in events:
        await ledger.record(e)
    drainer = LedgerDrainer(redis, db, stream=stream)
    grant = f"EXECUTE ON FUNCTION tenantry_record_usage(uuid[], integer[], json[]) TO {settings.db_app_role}"
    async with db.system() as conn:
        await conn.execute(text(f"REVOKE {grant.replace(' TO ', ' FROM ')}"))
    try:
        await drainer.ensure_group()
        with pytest.raises(DBAPIError, match="permission denied"):
            await drainer.drain_once()
        # Nothing was set aside or lost: the batch waits, pending, for the next attempt.
        assert drainer.dead_lettered == 0
        assert await redis.xlen(dead_letter_key(stream)) == 0
        assert (await redis.xpending(stream, GROUP))["pending"] == 3
    finally:
        async with db.system() as conn:
            await conn.execute(text(f"GRANT {grant}"))
    await drainer.flush()
    assert await stored(db, tenant.id) == [e.event_id for e in events]


async def test_an_entry_deleted_after_it_was_read_is_acknowledged_and_not_set_aside(
    redis: Redis, db: Database, admin: Admin, stream: str
) -> None:
    tenant = await admin.create_tenant()
    ledger = Ledger(redis, db, stream=stream)
    kept, deleted = event(tenant.id, 0), event(tenant.id, 1)
    await ledger.record(kept)
    await ledger.record(deleted)
    drainer = LedgerDrainer(redis, db, stream=stream, consumer="again")
    await drainer.ensure_group()
    # This consumer read both and died; meanwhile one entry was deleted (its fields are gone).
    read = await redis.xreadgroup(GROUP, "again", {stream: ">"}, count=10)
    await redis.xdel(stream, read[0][1][1][0])
    await drainer.flush()
    assert await stored(db, tenant.id) == [kept.event_id]
    assert (await redis.xpending(stream, GROUP))["pending"] == 0
    assert drainer.dead_lettered == 0
    assert drainer.drained == 1
