"""A tenant's audit trail lives in its isolation tier: written, read, verified, maintained and moved there."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from tenantry import tiers
from tenantry.audit import store
from tenantry.audit.changes import record_change
from tenantry.audit.maintenance import maintain
from tenantry.audit.records import SYSTEM_TENANT, AuditRecord
from tenantry.db import audit_schema, tier_schema
from tenantry.db.engine import CONTROL, Database
from tenantry.db.router import DATABASE, SCHEMA, SHARED, schema_name
from tenantry.db.tier_migrate import migrate_tiers
from tenantry.errors import Unavailable
from tenantry.metering.ledger import UsageEvent
from tenantry.metering.storing import insert_documents
from tenantry.settings import Settings
from tests.audit.test_chain import record
from tests.conftest import free_port
from tests.db.test_tiers import _keys, _put, _tenant
from tests.test_cli import run


async def in_copy(db: Database, tenant_id: uuid.UUID) -> list[tuple[int, str]]:
    """(seq, hash) of the tenant's records in the copy its tier keeps, read as the owner."""
    async with db.system_data(tenant_id) as conn:
        rows = await conn.execute(
            text("SELECT seq, encode(hash, 'hex') FROM audit_records WHERE tenant_id = :t ORDER BY seq"),
            {"t": tenant_id},
        )
        return [(r[0], r[1]) for r in rows]


async def in_shared(db: Database, tenant_id: uuid.UUID) -> int:
    async with db.system() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM public.audit_records WHERE tenant_id = :t"), {"t": tenant_id}
        )
        return int(found.scalar_one())


async def write(db: Database, tenant_id: uuid.UUID, numbers: range) -> list[AuditRecord]:
    written = [record(tenant_id, n) for n in numbers]
    event = UsageEvent(uuid.uuid4(), tenant_id, "data_put", 1, "ok", 1.0, int(datetime.now(UTC).timestamp() * 1000))
    await insert_documents(db, {tenant_id: [event.document()]}, {tenant_id: [r.document() for r in written]})
    return written


@asynccontextmanager
async def server_down(db: Database, tenant_id: uuid.UUID) -> AsyncIterator[None]:
    """A schema-tier tenant shown, for the block, as a database-tier one whose server does not answer."""
    async with db.system() as conn:
        await conn.execute(
            text(
                "UPDATE tenants SET placement = 'database', placement_name = 'gone', placement_url = :u WHERE id = :t"
            ),
            {"u": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gone", "t": tenant_id},
        )
    db.router.forget(tenant_id)
    try:
        yield
    finally:
        async with db.system() as conn:
            await conn.execute(
                text(
                    "UPDATE tenants SET placement = 'schema', placement_name = :n, placement_url = NULL WHERE id = :t"
                ),
                {"n": schema_name(tenant_id), "t": tenant_id},
            )
        db.router.forget(tenant_id)


async def tiered(db: Database, settings: Settings, tier: str) -> uuid.UUID:
    tenant_id = await _tenant(db)
    await tiers.move_tenant(db, settings, tenant_id, tier)
    return tenant_id


@pytest.mark.parametrize("tier", [SCHEMA, DATABASE])
async def test_a_tier_tenants_records_land_in_its_copy_and_its_usage_events_stay_shared(
    db: Database, settings: Settings, tier: str
) -> None:
    tenant_id = await tiered(db, settings, tier)
    written = await write(db, tenant_id, range(1, 6))
    assert [seq for seq, _ in await in_copy(db, tenant_id)] == [1, 2, 3, 4, 5]
    assert await in_shared(db, tenant_id) == 0
    async with db.system() as conn:  # the billing ledger is the operator's: shared in every tier
        usage = await conn.execute(text("SELECT count(*) FROM usage_events WHERE tenant_id = :t"), {"t": tenant_id})
        assert usage.scalar_one() == 1
    page, _ = await store.page(db, tenant_id, store.AuditFilter(), limit=10)
    assert [r["id"] for r in page] == [str(r.id) for r in reversed(written)]
    verified = await store.verify(db, tenant_id)
    assert (verified.intact, verified.checked, verified.head_seq) == (True, 5, 5)
    # A replayed batch (not fresh) adds nothing: the copy's function looks records up by id.
    await insert_documents(db, {}, {tenant_id: [r.document() for r in written]})
    assert len(await in_copy(db, tenant_id)) == 5


async def test_a_record_hashes_the_same_in_a_copy_as_in_the_shared_tables(db: Database, settings: Settings) -> None:
    shared, schema = await _tenant(db), await tiered(db, settings, SCHEMA)
    twin = record(shared, 1)
    await insert_documents(db, {}, {shared: [twin.document()]})
    async with db.system_data(schema) as conn:  # the same record through the copy's own function
        await conn.execute(
            text("SELECT tenantry_record_audit(CAST(:t AS uuid[]), ARRAY[1], ARRAY[CAST(:d AS json)])"),
            {"t": [shared], "d": twin.document()},
        )
        copied = (await conn.execute(text("SELECT hash FROM audit_records WHERE tenant_id = :t"), {"t": shared})).one()
    async with db.system() as conn:
        original = (
            await conn.execute(text("SELECT hash FROM public.audit_records WHERE tenant_id = :t"), {"t": shared})
        ).one()
    assert bytes(copied.hash) == bytes(original.hash)


async def test_a_move_through_every_tier_keeps_every_record_and_the_chain_verifies_after_each_step(
    db: Database, settings: Settings
) -> None:
    tenant_id = await _tenant(db)
    await _put(db, tenant_id, "kept")  # so the old copy of each move is kept until cleanup
    await write(db, tenant_id, range(1, 1201))  # more than a copying batch
    for step, tier in enumerate([SCHEMA, DATABASE, SHARED], start=1):
        before = await in_copy(db, tenant_id)
        moved = await tiers.move_tenant(db, settings, tenant_id, tier)
        assert moved["audit_records_copied"] == len(before)
        assert moved["verified"]["audit_records"]["rows"] == len(before)
        assert await in_copy(db, tenant_id) == before  # every record, seq and hash unchanged
        verified = await store.verify(db, tenant_id)
        assert verified.intact, verified.broken
        assert verified.checked == len(before)
        await tiers.cleanup_tenant(db, settings, tenant_id)
        await write(db, tenant_id, range(2000 + step, 2001 + step))  # the chain goes on where it now lives
        assert (await store.verify(db, tenant_id)).checked == len(before) + 1
    assert await in_shared(db, tenant_id) == 1203
    assert await _keys(db, tenant_id) == ["kept"]


async def test_an_append_to_the_trail_a_move_left_behind_is_refused_retryably(db: Database, settings: Settings) -> None:
    tenant_id = await _tenant(db)
    await _put(db, tenant_id, "kept")
    await write(db, tenant_id, range(1, 3))
    stale = Database(settings)  # another replica: it has not heard of the move
    try:
        assert (await store.verify(stale, tenant_id)).checked == 2  # caches "shared"
        await tiers.move_tenant(db, settings, tenant_id, SCHEMA)
        # Its drain's statement meets the fenced head, asks again, and writes to the new copy.
        await write(stale, tenant_id, range(3, 4))
    finally:
        await stale.dispose()
    assert [seq for seq, _ in await in_copy(db, tenant_id)] == [1, 2, 3]
    assert await in_shared(db, tenant_id) == 2  # the old copy, as the move left it
    assert (await store.verify(db, tenant_id)).intact


async def test_records_of_a_moving_tenant_are_refused_retryably_and_nothing_of_it_is_stored(
    db: Database, settings: Settings
) -> None:
    tenant_id, other = await tiered(db, settings, SCHEMA), await _tenant(db)
    async with db.system() as conn:  # a move's first step: the claim
        await conn.execute(text("UPDATE tenants SET moving_since = now() WHERE id = :t"), {"t": tenant_id})
    db.router.forget(tenant_id)
    try:
        with pytest.raises(Unavailable) as refused:
            await insert_documents(
                db, {}, {tenant_id: [record(tenant_id, 1).document()], other: [record(other, 1).document()]}
            )
        assert refused.value.code == "tenant_moving"
        assert await in_shared(db, other) == 1  # the others were stored
    finally:
        async with db.system() as conn:
            await conn.execute(text("UPDATE tenants SET moving_since = NULL WHERE id = :t"), {"t": tenant_id})
        db.router.forget(tenant_id)
    assert await in_copy(db, tenant_id) == []


async def test_the_system_trail_stays_shared(db: Database) -> None:
    before = (await store.verify(db, SYSTEM_TENANT)).head_seq
    await insert_documents(db, {}, {SYSTEM_TENANT: [record(SYSTEM_TENANT, 1).document()]})
    assert (await store.verify(db, SYSTEM_TENANT)).head_seq == before + 1


async def test_maintenance_makes_partitions_in_every_copy_and_one_failing_copy_stops_none(
    db: Database, settings: Settings
) -> None:
    good, broken = await tiered(db, settings, SCHEMA), await tiered(db, settings, SCHEMA)
    month = datetime.now(UTC).replace(day=1)
    nxt = month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)
    name = f"audit_records_y{nxt:%Y}m{nxt:%m}"
    async with db.system_data(good) as conn:
        await conn.execute(text(f"DROP TABLE {name}"))
    failed: list[str] = []
    async with server_down(db, broken):  # the other's copy is on a server that is down
        done = await maintain(db, keep_months=0, failed=failed)
    assert f"tenant {good}: created {name}" in done
    assert [line for line in failed if str(broken) in line]
    await write(db, good, range(1, 2))
    assert (await store.verify(db, good)).intact


# What revision 2 added to a copy, taken away again.
_BEFORE_REVISION_2 = (
    "DROP VIEW refusal_rollups_recount",
    "DROP TABLE refusal_rollups",
    *audit_schema.DROP_STATEMENTS,
    "DROP FUNCTION tenantry_unroll_refusal(), tenantry_rollup_refusals(), tenantry_refusal_kind(text, text),"
    " tenantry_usage_name(text), tenantry_usage_kind(text)",
)


async def test_migrate_gives_a_revision_1_copy_the_trail_its_tenant_left_in_the_shared_tables_and_keeps_its_data(
    db: Database, settings: Settings
) -> None:
    tenant_id = await tiered(db, settings, SCHEMA)
    await _put(db, tenant_id, "kept")
    async with db.system_data(tenant_id) as conn:  # what a copy made before revision 2 holds
        for statement in _BEFORE_REVISION_2:
            await conn.execute(text(statement))
    async with db.system() as conn:
        await conn.execute(text("UPDATE tenants SET placement_revision = 1 WHERE id = :t"), {"t": tenant_id})
        # Until then its records went to the shared trail.
        await conn.execute(
            text("SELECT public.tenantry_record_audit(CAST(:t AS uuid[]), ARRAY[2], CAST(:d AS json[]))"),
            {"t": [tenant_id], "d": [record(tenant_id, n).document() for n in (1, 2)]},
        )
    db.router.forget(tenant_id)
    with pytest.raises(Unavailable) as refused:
        await write(db, tenant_id, range(3, 4))
    assert refused.value.code == "tenant_not_migrated"

    [report] = await migrate_tiers(db, tenant_id=tenant_id)
    assert (report["from"], report["revision"], report["status"]) == (1, tier_schema.HEAD, "ok")
    assert [seq for seq, _ in await in_copy(db, tenant_id)] == [1, 2]  # adopted, and gone from the shared trail
    assert await in_shared(db, tenant_id) == 0
    await write(db, tenant_id, range(3, 5))  # the chain goes on in the copy
    assert [seq for seq, _ in await in_copy(db, tenant_id)] == [1, 2, 3, 4]
    verified = await store.verify(db, tenant_id)
    assert (verified.intact, verified.checked) == (True, 4)
    assert await _keys(db, tenant_id) == ["kept"]


async def test_a_cli_change_of_a_tier_tenant_is_recorded_in_its_trail(db: Database, settings: Settings) -> None:
    for tier in (SCHEMA, DATABASE):
        tenant_id = await tiered(db, settings, tier)
        changed = run(settings, "tenant", "set", str(tenant_id), "--plan", "pro", "--json")
        assert changed.returncode == 0, changed.stderr
        db.router.forget(tenant_id)
        page, _ = await store.page(db, tenant_id, store.AuditFilter(method="cli tenant.update"), limit=10)
        assert [r["detail"]["changes"]["plan"] for r in page] == [{"before": "free", "after": "pro"}]
        assert await in_shared(db, tenant_id) == 0
        assert (await store.verify(db, tenant_id)).intact


async def test_a_move_that_fails_half_way_leaves_the_trail_where_it_was_and_appendable(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = await _tenant(db)
    await write(db, tenant_id, range(1, 4))

    async def broken(*_: object, **__: object) -> int:
        raise OSError("the target went away mid-copy")

    monkeypatch.setattr(tiers, "copy_trail", broken)
    with pytest.raises(OSError, match="mid-copy"):
        await tiers.move_tenant(db, settings, tenant_id, SCHEMA)
    assert (await tiers.describe(db, settings, tenant_id))["tier"] == SHARED
    await write(db, tenant_id, range(4, 5))  # unfenced: the trail goes on where it is
    verified = await store.verify(db, tenant_id)
    assert (verified.intact, verified.checked) == (True, 4)
    assert await in_shared(db, tenant_id) == 4


async def test_a_cli_change_of_a_moving_tenant_is_refused_retryably_and_changes_nothing(
    db: Database, settings: Settings
) -> None:
    tenant_id = await tiered(db, settings, SCHEMA)
    async with db.system() as conn:
        await conn.execute(text("UPDATE tenants SET moving_since = now() WHERE id = :t"), {"t": tenant_id})
    try:
        refused = run(settings, "tenant", "set", str(tenant_id), "--plan", "pro", "--json")
        assert refused.returncode != 0
        assert '"tenant_moving"' in refused.stdout + refused.stderr
    finally:
        async with db.system() as conn:
            await conn.execute(text("UPDATE tenants SET moving_since = NULL WHERE id = :t"), {"t": tenant_id})
        db.router.forget(tenant_id)
    async with db.system() as conn:
        plan = await conn.execute(text("SELECT plan FROM tenants WHERE id = :t"), {"t": tenant_id})
        assert plan.scalar_one() == "free"
    assert await in_copy(db, tenant_id) == []


async def refusals(db: Database, tenant_id: uuid.UUID) -> tuple[int, int]:
    """The tenant's refusals where its trail is: as rolled up, and as counted afresh from the records."""
    async with db.tenant(tenant_id) as conn:
        rolled = await conn.execute(text("SELECT coalesce(sum(refusals), 0) FROM refusal_rollups"))
        counted = await conn.execute(text("SELECT coalesce(sum(refusals), 0) FROM refusal_rollups_recount"))
        return int(rolled.scalar_one()), int(counted.scalar_one())


async def test_refusals_are_rolled_up_with_the_trail_in_every_tier_and_follow_it_through_moves(
    db: Database, settings: Settings
) -> None:
    tenant_id = await _tenant(db)
    await _put(db, tenant_id, "kept")
    await write(db, tenant_id, range(1, 31))  # every third record is a refusal: 10
    assert await refusals(db, tenant_id) == (10, 10)
    for tier in (SCHEMA, DATABASE, SHARED):
        await tiers.move_tenant(db, settings, tenant_id, tier)
        assert await refusals(db, tenant_id) == (10, 10), tier
        await tiers.cleanup_tenant(db, settings, tenant_id)
    await tiers.move_tenant(db, settings, tenant_id, SCHEMA)
    await write(db, tenant_id, range(31, 34))  # one more refusal, rolled up in the copy
    assert await refusals(db, tenant_id) == (11, 11)


async def test_a_moved_trail_keeps_its_months_in_partitions_of_their_own_so_retention_drops_them(
    db: Database, settings: Settings
) -> None:
    tenant_id = await _tenant(db)
    async with db.system() as conn:  # an old month the shared trail still keeps
        await conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS audit_records_y2021m03 PARTITION OF audit_records"
                " FOR VALUES FROM ('2021-03-01 00:00+00') TO ('2021-04-01 00:00+00')"
            )
        )
    old = datetime(2021, 3, 15, tzinfo=UTC)
    records = [record(tenant_id, 1, at=old), record(tenant_id, 2, at=old), record(tenant_id, 3)]
    await insert_documents(db, {}, {tenant_id: [r.document() for r in records]})
    await tiers.move_tenant(db, settings, tenant_id, SCHEMA)
    async with db.system_data(tenant_id) as conn:
        where = await conn.execute(
            text("SELECT seq, tableoid::regclass::text FROM audit_records WHERE tenant_id = :t ORDER BY seq"),
            {"t": tenant_id},
        )
        assert [row[1].split(".")[-1] for row in where][:2] == ["audit_records_y2021m03"] * 2
        dropped = (await conn.execute(text("SELECT tenantry_audit_partitions(0, 13)"))).scalar_one()
    assert "dropped audit_records_y2021m03" in dropped
    verified = await store.verify(db, tenant_id)
    assert (verified.intact, verified.first_seq, verified.checked) == (True, 3, 1)


async def test_a_change_recorded_on_a_control_plane_transaction_lands_in_the_tier_tenants_copy(
    db: Database, settings: Settings
) -> None:
    for tier in (SCHEMA, DATABASE):
        tenant_id = await tiered(db, settings, tier)
        # As the CLI records an upstream's creation: the application role, the tenant bound on the shared tables.
        async with db.tenant(tenant_id, plane=CONTROL) as conn:
            await record_change(db, conn, tenant_id, "upstream.create", "u1", None, {"name": "crm", "headers": "x"})
        page, _ = await store.page(db, tenant_id, store.AuditFilter(method="cli upstream.create"), limit=10)
        assert [r["detail"]["changes"]["headers"] for r in page] == [{"changed": True}]  # never the secret
        assert await in_shared(db, tenant_id) == 0
