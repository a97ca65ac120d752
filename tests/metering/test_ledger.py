"""The usage ledger against the real Redis and PostgreSQL: the recorded event is the stored one, it goes
to PostgreSQL when Redis is down, and the app role cannot rewrite it. The drain: test_drain.py."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import Database
from tenantry.metering.drain import LedgerDrainer
from tenantry.metering.ledger import Ledger, UsageEvent, insert_events, unstorable
from tests.conftest import Admin
from tests.metering.test_meter import closed_port, unreachable_client


def event(tenant_id: str, n: int = 0, at_ms: int = 1_800_000_000_000) -> UsageEvent:
    return UsageEvent(uuid.uuid4(), uuid.UUID(tenant_id), "data_get", 1, "ok", 1.5, at_ms + n)


async def stored(db: Database, tenant_id: str) -> list[uuid.UUID]:
    async with db.system() as conn:
        rows = await conn.execute(
            text("SELECT event_id FROM usage_events WHERE tenant_id = :t ORDER BY occurred_at"),
            {"t": uuid.UUID(tenant_id)},
        )
        return list(rows.scalars())


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
