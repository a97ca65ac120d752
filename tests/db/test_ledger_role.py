"""The shared ledger's batch writer (migration 0021): what the ledger role may do, and that a batch stored
set-based is exactly what the per-tenant functions store, hash for hash."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.audit.records import AuditRecord
from tenantry.db.engine import Database
from tenantry.db.ledger_schema import LEDGER_GRANTS, LEDGER_SETTING, ledger_role
from tenantry.metering.ledger import UsageEvent, unstorable

PER_TENANT = (
    "SELECT tenantry_record_usage(CAST(:t AS uuid[]), CAST(:c AS integer[]), CAST(:e AS json[])),"
    " tenantry_record_audit(CAST(:t AS uuid[]), CAST(:c AS integer[]), CAST(:a AS json[]), :fresh)"
)
BATCH = (
    "SELECT tenantry_ledger_usage(CAST(:t AS uuid[]), CAST(:c AS integer[]), CAST(:e AS json[])),"
    " tenantry_ledger_audit(CAST(:t AS uuid[]), CAST(:c AS integer[]), CAST(:a AS json[]), :fresh)"
)
TRAIL = "SELECT seq, id, prev_hash, hash, method, tool FROM audit_records WHERE tenant_id = :t ORDER BY seq"
HEAD = "SELECT seq, hash FROM audit_chain_heads WHERE tenant_id = :t"
USAGE_ROLLUPS = "SELECT kind, name, outcome, calls, units, latency_histogram FROM usage_rollups WHERE tenant_id = :t"
REFUSAL_ROLLUPS = "SELECT kind, name, reason, refusals FROM refusal_rollups WHERE tenant_id = :t"


def entries(tenant: uuid.UUID, n: int, base_ms: int) -> tuple[list[str], list[str]]:
    """`n` calls of `tenant` (usage event + audit record each), one in three refused (a record only in the
    roll-ups of refusals; its usage event is there too, as a test's stand-in), with odd arguments."""
    events, records = [], []
    for k in range(n):
        event = UsageEvent(uuid.uuid4(), tenant, f"tool_{k % 2}", k, "ok", 0.4 * k, base_ms + k)
        refused = k % 3 == 2
        record = AuditRecord(
            tenant_id=tenant,
            transport="streamable_http",
            method="tools/call",
            decision="refused" if refused else "admitted",
            outcome="policy_denied" if refused else "ok",
            reason="policy_denied" if refused else None,
            tool=event.tool,
            subject="key:k1",
            status=200,
            event_id=event.event_id,
            args={"q": f'it\'s "{k}"\n', "n": [k, None]},
            at_us=(base_ms + k) * 1000,
        )
        events.append(event.document())
        records.append(record.document())
    return events, records


async def new_tenants(db: Database, n: int) -> list[uuid.UUID]:
    """Tenant rows made directly (the usage events' foreign key needs them), not through the REST API,
    whose own requests the drain would append to their trails while a test compares them."""
    async with db.system() as conn:
        rows = await conn.execute(
            text("INSERT INTO tenants (name) SELECT 'ledger-test' FROM generate_series(1, :n) RETURNING id"), {"n": n}
        )
        return list(rows.scalars())


async def ledger_rows(db: Database, *tenants: uuid.UUID) -> tuple[int, ...]:
    """How many usage events, audit records and chain heads `tenants` have."""
    async with db.system() as conn:
        return tuple(
            [
                (
                    await conn.execute(
                        text(f"SELECT count(*) FROM {table} WHERE tenant_id = ANY(:t)"), {"t": list(tenants)}
                    )
                ).scalar_one()
                for table in ("usage_events", "audit_records", "audit_chain_heads")
            ]
        )


def params(batch: dict[uuid.UUID, tuple[list[str], list[str]]], *, fresh: bool) -> dict[str, Any]:
    tenants = sorted(batch)
    return {
        "t": tenants,
        "c": [len(batch[t][0]) for t in tenants],
        "e": [doc for t in tenants for doc in batch[t][0]],
        "a": [doc for t in tenants for doc in batch[t][1]],
        "fresh": fresh,
    }


async def state(conn: AsyncConnection, tenants: list[uuid.UUID]) -> dict[uuid.UUID, tuple[Any, ...]]:
    """Each tenant's trail, chain head and roll-ups, as the app role sees them bound to it."""
    seen = {}
    for tenant in tenants:
        await conn.execute(text("SELECT set_config('tenantry.tenant_id', :t, true)"), {"t": str(tenant)})
        found = []
        for query in (TRAIL, HEAD, USAGE_ROLLUPS, REFUSAL_ROLLUPS):
            found.append(sorted(tuple(row) for row in (await conn.execute(text(query), {"t": tenant})).all()))
        seen[tenant] = tuple(found)
    return seen


async def stored_with(db: Database, statement: str, *batches: dict[str, Any]) -> dict[uuid.UUID, tuple[Any, ...]]:
    """What `statement` stores of `batches` (one after the other), read back, then rolled back."""
    async with db.app_engine.connect() as conn:
        transaction = await conn.begin()
        try:
            for batch in batches:
                await conn.execute(text(statement), batch)
            return await state(conn, batches[-1]["t"])
        finally:
            await transaction.rollback()


async def test_a_batch_stored_set_based_is_what_the_per_tenant_functions_store(db: Database) -> None:
    a, b, c = await new_tenants(db, 3)
    # A trail and roll-ups there already (committed): the chains go on from heads that hold a hash.
    earlier = params({a: entries(a, 2, 1_800_000_000_000), b: entries(b, 1, 1_800_000_000_000)}, fresh=True)
    async with db.app_engine.begin() as conn:
        await conn.execute(text(BATCH), earlier)
    calls = {t: entries(t, n, 1_800_000_100_000) for t, n in ((a, 5), (b, 1), (c, 7))}
    first = params(calls, fresh=True)
    # Replayed: the same entries again, with two new ones of `a` after them (not `fresh`: looked for).
    replayed = dict(calls)
    more_events, more_records = entries(a, 2, 1_800_000_200_000)
    replayed[a] = (calls[a][0] + more_events, calls[a][1] + more_records)
    again = params(replayed, fresh=False)

    per_tenant = await stored_with(db, PER_TENANT, first, again)
    batched = await stored_with(db, BATCH, first, again)

    assert batched == per_tenant
    trail, head, usage, refusals = batched[a]
    assert [row[0] for row in trail] == list(range(1, 10))  # 2 earlier, 5, then 2 more: none twice
    assert head == [(9, trail[-1][3])]
    assert sum(row[3] for row in usage) == 9
    assert sum(row[3] for row in refusals) == 1
    assert len(batched[c][0]) == 7
    assert batched[c][0][0][2] == b"\x00" * 32  # a new chain starts at zero


async def test_the_chain_stored_set_based_verifies(db: Database) -> None:
    tenants = sorted(await new_tenants(db, 3))
    for round_ in range(2):
        batch = params(
            {t: entries(t, 3 + k, 1_800_000_000_000 + round_ * 1000) for k, t in enumerate(tenants)}, fresh=True
        )
        async with db.app_engine.begin() as conn:
            await conn.execute(text(BATCH), batch)
    async with db.system() as conn:
        for tenant in tenants:
            rows = (
                await conn.execute(
                    text(
                        "SELECT r.seq, r.prev_hash, r.hash, tenantry_audit_hash(r) AS recomputed"
                        " FROM audit_records r WHERE r.tenant_id = :t ORDER BY r.seq"
                    ),
                    {"t": tenant},
                )
            ).all()
            assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
            assert all(r.hash == r.recomputed for r in rows)
            assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(rows))


async def test_the_ledger_role_can_log_in_nowhere_and_nobody_can_become_it(db: Database) -> None:
    role = ledger_role(db.app_role)
    async with db.system() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb,"
                    " (SELECT count(*) FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member"
                    "  WHERE m.roleid = r.oid AND NOT u.rolsuper AND u.rolname <> current_user) AS members,"
                    " (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid) AS tables"
                    " FROM pg_roles r WHERE rolname = :r"
                ),
                {"r": role},
            )
        ).one()
    assert tuple(row) == (False, False, False, False, False, 0, 0)
    with pytest.raises(DBAPIError, match="permission denied"):
        async with db.unbound() as conn:
            await conn.execute(text(f"SET LOCAL ROLE {role}"))


async def test_the_ledger_role_may_touch_only_the_ledger_tables(db: Database) -> None:
    role = ledger_role(db.app_role)
    async with db.system() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT c.relname, array_remove(ARRAY["
                    " CASE WHEN has_table_privilege(:r, c.oid, 'SELECT') THEN 'SELECT' END,"
                    " CASE WHEN has_table_privilege(:r, c.oid, 'INSERT') THEN 'INSERT' END,"
                    " CASE WHEN has_table_privilege(:r, c.oid, 'UPDATE') THEN 'UPDATE' END,"
                    " CASE WHEN has_table_privilege(:r, c.oid, 'DELETE') THEN 'DELETE' END,"
                    " CASE WHEN has_table_privilege(:r, c.oid, 'TRUNCATE') THEN 'TRUNCATE' END], NULL) AS rights"
                    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v') AND NOT c.relispartition"
                ),
                {"r": role},
            )
        ).all()
    granted = {row.relname: tuple(row.rights) for row in rows if row.rights}
    assert granted == LEDGER_GRANTS


async def test_the_ledger_role_sees_no_row_unless_its_functions_opened_the_ledger(db: Database) -> None:
    (tenant,) = await new_tenants(db, 1)
    async with db.app_engine.begin() as conn:
        await conn.execute(text(BATCH), params({tenant: entries(tenant, 2, 1_800_000_000_000)}, fresh=True))
        # The functions close the ledger before they return, in the caller's transaction too.
        assert (await conn.execute(text(f"SELECT current_setting('{LEDGER_SETTING}', true)"))).scalar() == ""
    role = ledger_role(db.app_role)
    async with db.system() as conn:  # the owner (a superuser in tests) takes the role, as the functions do
        await conn.execute(text(f"SET LOCAL ROLE {role}"))
        seen = "SELECT (SELECT count(*) FROM usage_events) + (SELECT count(*) FROM audit_records)"
        assert (await conn.execute(text(seen))).scalar() == 0
        with pytest.raises(DBAPIError, match="row-level security"):
            async with conn.begin_nested():
                await conn.execute(
                    text(
                        "INSERT INTO usage_events (tenant_id, event_id, tool, units, outcome, latency_ms, occurred_at)"
                        " VALUES (:t, gen_random_uuid(), 'x', 1, 'ok', 1, now())"
                    ),
                    {"t": tenant},
                )
        await conn.execute(text(f"SELECT set_config('{LEDGER_SETTING}', 'on', true)"))
        assert (await conn.execute(text(seen))).scalar() >= 4
        await conn.execute(text("RESET ROLE"))


@pytest.mark.parametrize(
    "shape",
    ["more counts than tenants", "counts that add up wrong", "a zero count", "a tenant twice", "a NULL tenant"],
)
async def test_misaligned_batches_are_refused_and_store_nothing(db: Database, shape: str) -> None:
    a, b = await new_tenants(db, 2)
    events, records = entries(a, 2, 1_800_000_000_000)
    tenants: list[uuid.UUID | None]
    tenants, counts = {
        "more counts than tenants": ([a], [1, 1]),
        "counts that add up wrong": ([a, b], [1, 2]),
        "a zero count": ([a, b], [2, 0]),
        "a tenant twice": ([a, a], [1, 1]),
        "a NULL tenant": ([a, None], [1, 1]),
    }[shape]
    before = await ledger_rows(db, a, b)
    for function, docs in (("tenantry_ledger_usage", events), ("tenantry_ledger_audit", records)):
        with pytest.raises(DBAPIError, match="do not line up") as caught:
            async with db.unbound() as conn:
                await conn.execute(
                    text(f"SELECT {function}(CAST(:t AS uuid[]), CAST(:c AS integer[]), CAST(:d AS json[]))"),
                    {"t": tenants, "c": counts, "d": docs},
                )
        assert unstorable(caught.value)
    assert await ledger_rows(db, a, b) == before
