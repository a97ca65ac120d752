"""The ledger drain against the real Redis and PostgreSQL: each event moved into usage_events once,
replayed without duplicates, taken over from a dead consumer, poison entries set aside."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry import tiers
from tenantry.audit import store
from tenantry.audit.records import AuditRecord
from tenantry.db.engine import Database
from tenantry.db.router import SCHEMA
from tenantry.metering.drain import GROUP, LedgerDrainer, dead_letter_key, oldest_undrained_age_ms
from tenantry.metering.ledger import Ledger, insert_events
from tenantry.metering.resp import RespClient
from tenantry.settings import Settings
from tests.audit.test_chain import record
from tests.conftest import Admin, eventually
from tests.db.test_tier_trails import server_down
from tests.db.test_tiers import _put, _tenant
from tests.metering.test_ledger import event, stored


@pytest.fixture(params=["redis-py", "lean"])
async def drain_client(
    request: pytest.FixtureRequest, settings: Settings, redis: Redis
) -> AsyncIterator[Redis | RespClient]:
    """The drainer's client: redis-py, or its own lean connection (what the app uses)."""
    if request.param == "redis-py":
        yield redis
        return
    client = RespClient.from_url(settings.redis_url, timeout=5.0)
    try:
        yield client
    finally:
        await client.aclose()


async def test_recorded_events_are_drained_into_postgres_once(
    redis: Redis, db: Database, admin: Admin, stream: str, drain_client: Redis | RespClient
) -> None:
    tenant = await admin.create_tenant()
    ledger = Ledger(redis, db, stream=stream)
    events = [event(tenant.id, n) for n in range(5)]
    for e in events:
        await ledger.record(e)
    # Undrained events have an age (asked a second later: within one millisecond it could be 0).
    assert await oldest_undrained_age_ms(redis, stream, now_ms=int(time.time() * 1000) + 1000) >= 1000
    drainer = LedgerDrainer(drain_client, db, stream=stream)
    await drainer.flush()
    assert await stored(db, tenant.id) == [e.event_id for e in events]
    assert await redis.xlen(stream) == 0
    assert await oldest_undrained_age_ms(redis, stream) == 0
    # A replay of the same events (a crash after the commit, before the acknowledgement) adds nothing.
    assert await insert_events(db, events) == 0
    assert len(await stored(db, tenant.id)) == 5


async def test_the_running_drainer_moves_events_recorded_while_it_blocks(
    redis: Redis, db: Database, admin: Admin, stream: str, drain_client: Redis | RespClient
) -> None:
    tenant = await admin.create_tenant()
    drainer = LedgerDrainer(drain_client, db, stream=stream, block_ms=200, linger_ms=10)
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


async def test_one_batch_of_many_tenants_lands_each_event_under_its_own_tenant(
    redis: Redis, db: Database, admin: Admin, stream: str, drain_client: Redis | RespClient
) -> None:
    tenants = [await admin.create_tenant() for _ in range(3)]
    ledger = Ledger(redis, db, stream=stream)
    events = [event(tenants[n % 3].id, n) for n in range(30)]  # interleaved, as calls arrive
    for e in events:
        await ledger.record(e)
    drainer = LedgerDrainer(drain_client, db, stream=stream)
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


async def test_entries_that_can_never_be_stored_are_set_aside_and_the_rest_drain(
    redis: Redis, db: Database, admin: Admin, stream: str, drain_client: Redis | RespClient
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
    drainer = LedgerDrainer(drain_client, db, stream=stream)
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


async def test_a_missing_grant_stalls_the_drain_instead_of_setting_events_aside(
    redis: Redis, db: Database, admin: Admin, stream: str, settings: Settings
) -> None:
    tenant = await admin.create_tenant()
    events = [event(tenant.id, n) for n in range(3)]
    ledger = Ledger(redis, db, stream=stream)
    for e in events:
        await ledger.record(e)
    drainer = LedgerDrainer(redis, db, stream=stream)
    grant = f"EXECUTE ON FUNCTION tenantry_ledger_usage(uuid[], integer[], json[]) TO {settings.db_app_role}"
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


async def test_an_audit_record_that_can_never_be_stored_does_not_take_its_calls_usage_event_with_it(
    redis: Redis, db: Database, admin: Admin, stream: str, drain_client: Redis | RespClient
) -> None:
    tenant = await admin.create_tenant()
    ledger = Ledger(redis, db, stream=stream)
    billed, fine = event(tenant.id, 1), event(tenant.id, 2)
    # A record PostgreSQL refuses (an id that is no UUID), riding with a good usage event.
    await ledger.record(
        billed, audit='{"id": "not-a-uuid", "at": 1, "tr": "rest", "m": "x", "d": "admitted", "o": "ok"}'
    )
    await ledger.record(fine, audit=AuditRecord(uuid.UUID(tenant.id), "rest", "GET /x", "admitted", "ok").document())
    drainer = LedgerDrainer(drain_client, db, stream=stream)
    await drainer.flush()
    assert sorted(await stored(db, tenant.id)) == sorted([billed.event_id, fine.event_id])  # both billed
    assert drainer.dead_lettered == 1
    [(_, kept)] = await redis.xrange(dead_letter_key(stream))
    assert kept[b"reason"].decode().startswith("audit record refused by PostgreSQL (usage stored)")
    async with db.tenant(uuid.UUID(tenant.id)) as conn:
        methods = (await conn.execute(text("SELECT method FROM audit_records"))).scalars().all()
    assert "GET /x" in methods


async def test_records_of_a_tenant_moving_between_tiers_wait_in_the_stream_and_land_once_in_its_new_copy(
    redis: Redis, db: Database, settings: Settings, stream: str
) -> None:
    tenant_id, other = await _tenant(db), await _tenant(db)
    await _put(db, tenant_id, "kept")
    ledger = Ledger(redis, db, stream=stream)
    for n in range(1, 4):
        await ledger.append(tenant_id, record(tenant_id, n).document())
    drainer = LedgerDrainer(redis, db, stream=stream, block_ms=50, linger_ms=10, retry_ms=50)
    await drainer.flush()
    async with db.system() as conn:  # a move's first step, the claim: the tenant's trail is nowhere to write
        await conn.execute(text("UPDATE tenants SET moving_since = now() WHERE id = :t"), {"t": tenant_id})
    db.router.forget(tenant_id)
    call = event(str(tenant_id), 1)
    await ledger.record(call, audit=record(tenant_id, 4).document())  # a call's event and record, one entry
    await ledger.append(tenant_id, record(tenant_id, 5).document())
    await ledger.append(other, record(other, 1).document())
    await drainer.flush()
    # Neither stored, nor acknowledged, nor set aside: pending; the other tenant's went through.
    assert drainer.left_pending == 2
    assert await redis.xlen(stream) == 2
    assert await redis.xlen(dead_letter_key(stream)) == 0
    assert await stored(db, str(tenant_id)) == []
    assert (await store.verify(db, other)).checked == 1

    await tiers.move_tenant(db, settings, tenant_id, SCHEMA)
    # A newer record, read for the first time, waits behind the older ones: the chain keeps the stream's order.
    await ledger.append(tenant_id, record(tenant_id, 6).document())
    assert await drainer.drain_once(recover=False) == 1
    assert drainer.left_pending == 1
    task = asyncio.create_task(drainer.run())  # the running drain reads them again until they land
    try:

        async def drained() -> bool:
            return await redis.xlen(stream) == 0

        await eventually(drained, within=10, what="the waiting entries' storage")
    finally:
        drainer.stop()
        await task
    async with db.system_data(tenant_id) as conn:  # each once, in the order they were written
        order = await conn.execute(
            text("SELECT latency_us FROM audit_records WHERE tenant_id = :t ORDER BY seq"), {"t": tenant_id}
        )
        assert list(order.scalars()) == [1, 2, 3, 4, 5, 6]
    assert await stored(db, str(tenant_id)) == [call.event_id]  # billed once
    verified = await store.verify(db, tenant_id)
    assert (verified.intact, verified.checked) == (True, 6)
    assert await redis.xlen(dead_letter_key(stream)) == 0


async def test_a_tier_tenant_whose_database_is_down_waits_and_stalls_no_other_tenant(
    redis: Redis, db: Database, settings: Settings, stream: str
) -> None:
    down, other = await _tenant(db), await _tenant(db)
    await tiers.move_tenant(db, settings, down, SCHEMA)
    ledger = Ledger(redis, db, stream=stream)
    drainer = LedgerDrainer(redis, db, stream=stream)
    async with server_down(db, down):
        await ledger.record(event(str(down), 1), audit=record(down, 1).document())
        await ledger.append(other, record(other, 1).document())
        await drainer.flush()
        assert drainer.left_pending == 1  # waiting, not set aside
        assert await redis.xlen(dead_letter_key(stream)) == 0
        assert (await store.verify(db, other)).checked == 1  # the others drained
    # Its server is back.
    await drainer.flush()
    assert await redis.xlen(stream) == 0
    assert (await store.verify(db, down)).checked == 1
