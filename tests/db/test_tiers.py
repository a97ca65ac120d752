"""Isolation tiers in the database layer: provisioning, the router, RLS in every tier, moves and cleanup."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry import tiers
from tenantry.db import tier_schema
from tenantry.db.engine import CONTROL, Database
from tenantry.db.engines import EngineCache
from tenantry.db.router import DATABASE, SCHEMA, SHARED, database_name, schema_name
from tenantry.errors import Conflict, Unavailable
from tenantry.settings import Settings
from tests.conftest import TEST_DB

COMMANDS = {"SELECT", "INSERT", "UPDATE", "DELETE"}
# The trail is append-only for the application role in a copy as in the shared tables (tests/db/test_rls.py).
APPEND_ONLY = {"audit_records": {"SELECT", "INSERT"}, "audit_chain_heads": {"SELECT", "INSERT", "UPDATE"}}
_PUT = text(
    "INSERT INTO tenant_data (tenant_id, key, value, size_bytes) VALUES (:t, :k, CAST(:v AS jsonb), :n)"
    " ON CONFLICT (tenant_id, key) DO UPDATE SET value = excluded.value, size_bytes = excluded.size_bytes"
)


async def _tenant(db: Database, plan: str = "free") -> uuid.UUID:
    tenant_id = uuid.uuid4()
    async with db.system() as conn:
        await conn.execute(
            text("INSERT INTO tenants (id, name, plan, status) VALUES (:t, 'tiered', :p, 'active')"),
            {"t": tenant_id, "p": plan},
        )
    return tenant_id


async def _put(db: Database, tenant_id: uuid.UUID, key: str, value: object = 1) -> None:
    encoded = json.dumps(value)
    async with db.tenant(tenant_id) as conn:
        await conn.execute(_PUT, {"t": tenant_id, "k": key, "v": encoded, "n": len(encoded)})


async def _keys(db: Database, tenant_id: uuid.UUID) -> list[str]:
    async with db.tenant(tenant_id) as conn:
        return list((await conn.execute(text("SELECT key FROM tenant_data ORDER BY key"))).scalars())


@pytest.fixture
async def tiered(db: Database, settings: Settings) -> dict[str, uuid.UUID]:
    """One tenant on each tier, each with a row of its own."""
    found = {tier: await _tenant(db) for tier in (SHARED, SCHEMA, DATABASE)}
    for tier, tenant_id in found.items():
        await tiers.move_tenant(db, settings, tenant_id, tier)
        await _put(db, tenant_id, f"{tier}-key")
    return found


async def _server(database: str) -> asyncpg.Connection:
    return await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}")


async def _catalog(conn: asyncpg.Connection, namespace: str) -> list[tuple[str, bool, bool, set[str]]]:
    rows = await conn.fetch(
        """
        SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
               array(SELECT p.cmd FROM pg_policies p
                     WHERE p.schemaname = n.nspname AND p.tablename = c.relname AND $2 = ANY(p.roles)) AS cmds,
               EXISTS (SELECT 1 FROM pg_attribute a
                       WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped) AS has_tenant
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
        """,
        namespace,
        "tenantry_app",
    )
    for row in rows:
        assert row["has_tenant"], f"{row['relname']} carries no tenant_id"
    return [(r["relname"], r["relrowsecurity"], r["relforcerowsecurity"], set(r["cmds"])) for r in rows]


async def test_every_table_of_every_tier_has_tenant_id_forced_rls_and_a_policy_per_command(
    db: Database, tiered: dict[str, uuid.UUID]
) -> None:
    copies = [
        (TEST_DB, schema_name(tiered[SCHEMA])),
        (database_name(TEST_DB, tiered[DATABASE]), "public"),
    ]
    for database, namespace in copies:
        conn = await _server(database)
        try:
            tables = await _catalog(conn, namespace)
            indexes = await conn.fetch(
                """
                SELECT i.indexrelid::regclass::text AS index,
                       (SELECT attname FROM pg_attribute WHERE attrelid = t.oid AND attnum = i.indkey[0]) AS first
                FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
                WHERE n.nspname = $1
                """,
                namespace,
            )
        finally:
            await conn.close()
        # What a move copies, and the refusal roll-ups the trail's triggers keep.
        assert {t[0] for t in tables} == {*tier_schema.DATA_PLANE_TABLES, "refusal_rollups"}, (database, namespace)
        for name, enabled, forced, commands in tables:
            assert enabled, f"{database}.{namespace}.{name}: RLS not enabled"
            assert forced, f"{database}.{namespace}.{name}: RLS not forced"
            expected = APPEND_ONLY.get(name, COMMANDS)
            assert commands == expected, f"{database}.{namespace}.{name}: app role policies cover {commands}"
        assert indexes
        assert all(row["first"] == "tenant_id" for row in indexes), indexes


async def test_each_tier_keeps_its_rows_where_the_router_says(db: Database, tiered: dict[str, uuid.UUID]) -> None:
    for tier, tenant_id in tiered.items():
        assert await _keys(db, tenant_id) == [f"{tier}-key"]
    async with db.system() as conn:  # the shared tables hold only the shared-tier tenant's row
        shared = set(
            (
                await conn.execute(
                    text("SELECT tenant_id FROM tenant_data WHERE tenant_id = ANY(:ids)"),
                    {"ids": list(tiered.values())},
                )
            ).scalars()
        )
    assert shared == {tiered[SHARED]}
    conn = await _server(database_name(TEST_DB, tiered[DATABASE]))
    try:
        assert await conn.fetchval("SELECT count(*) FROM tenant_data") == 1
        assert await conn.fetchval("SELECT keys FROM tenant_storage") == 1  # its trigger counted it there
    finally:
        await conn.close()


async def test_a_tier_copy_is_a_second_wall_rows_of_another_tenant_stay_invisible(
    db: Database, tiered: dict[str, uuid.UUID]
) -> None:
    schema_tenant, intruder = tiered[SCHEMA], uuid.uuid4()
    # A routing bug that bound another tenant on the schema tier's connection would see nothing there.
    async with db.system() as conn:
        await conn.execute(text(f"SET LOCAL search_path TO {schema_name(schema_tenant)}"))
        await conn.execute(text("SET LOCAL ROLE tenantry_app"))
        await conn.execute(text("SELECT set_config('tenantry.tenant_id', :t, true)"), {"t": str(intruder)})
        assert (await conn.execute(text("SELECT count(*) FROM tenant_data"))).scalar_one() == 0
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.tenant(schema_tenant) as conn:
            await conn.execute(_PUT, {"t": intruder, "k": "x", "v": "1", "n": 1})


async def test_the_schema_search_path_ends_with_the_transaction_on_a_reused_connection(
    settings: Settings, tiered: dict[str, uuid.UUID]
) -> None:
    one = Database(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    try:
        async with one.tenant(tiered[SCHEMA]) as conn:
            assert (await conn.execute(text("SHOW search_path"))).scalar_one() == schema_name(tiered[SCHEMA])
            backend = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with one.tenant(tiered[SHARED]) as conn:  # the same pooled connection, next user
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() == backend
            assert (await conn.execute(text("SHOW search_path"))).scalar_one() == '"$user", public'
            assert list((await conn.execute(text("SELECT key FROM tenant_data"))).scalars()) == ["shared-key"]
    finally:
        await one.dispose()


async def test_a_schema_tier_transaction_cannot_reach_shared_tables_through_the_data_plane(
    db: Database, tiered: dict[str, uuid.UUID]
) -> None:
    with pytest.raises(DBAPIError, match="does not exist"):
        async with db.tenant(tiered[SCHEMA]) as conn:
            await conn.execute(text("SELECT count(*) FROM upstreams"))
    async with db.tenant(tiered[SCHEMA], plane=CONTROL) as conn:
        assert (await conn.execute(text("SELECT count(*) FROM tenants"))).scalar_one() == 1


async def test_the_router_answers_from_memory_until_the_tenant_row_changes(db: Database, settings: Settings) -> None:
    tenant_id = await _tenant(db)
    await _put(db, tenant_id, "a")
    loads = db.router.loads
    for _ in range(5):
        await _keys(db, tenant_id)
    assert db.router.loads == loads  # cached after the first
    await tiers.move_tenant(db, settings, tenant_id, SCHEMA)
    assert db.router.cached(tenant_id) is None or db.router.cached(tenant_id).tier == SCHEMA  # type: ignore[union-attr]
    assert await _keys(db, tenant_id) == ["a"]
    assert db.router.cached(tenant_id).tier == SCHEMA  # type: ignore[union-attr]


async def test_provisioning_twice_makes_one_schema_and_changes_nothing(db: Database, settings: Settings) -> None:
    tenant_id = await _tenant(db, plan="pro")
    pro = settings.model_copy(update={"plan_tiers": {"pro": "schema"}})
    first = await tiers.place_tenant(db, pro, tenant_id)
    await _put(db, tenant_id, "kept")
    second = await tiers.place_tenant(db, pro, tenant_id)
    assert first["moved"]
    assert not second["moved"]
    assert await _keys(db, tenant_id) == ["kept"]
    async with db.system() as conn:
        schemas = (
            await conn.execute(
                text("SELECT count(*) FROM pg_namespace WHERE nspname = :n"), {"n": schema_name(tenant_id)}
            )
        ).scalar_one()
    assert schemas == 1


async def test_a_move_copies_verifies_switches_and_keeps_the_old_copy_until_cleanup(
    db: Database, settings: Settings
) -> None:
    tenant_id = await _tenant(db)
    for i in range(20):
        await _put(db, tenant_id, f"k{i:02}", {"n": i, "text": "é" * i})
    expected = await _keys(db, tenant_id)
    path = [SCHEMA, DATABASE, SHARED, DATABASE, SCHEMA, SHARED]
    for tier in path:
        moved = await tiers.move_tenant(db, settings, tenant_id, tier)
        assert moved["moved"]
        assert moved["rows_copied"] == 20
        assert moved["verified"]["tenant_data"]["rows"] == 20
        assert await _keys(db, tenant_id) == expected
        # Until cleanup the old copy is kept, and another move is refused.
        with pytest.raises(Conflict) as refused:
            await tiers.move_tenant(db, settings, tenant_id, SCHEMA if tier != SCHEMA else SHARED)
        assert refused.value.code == "cleanup_pending"
        cleaned = await tiers.cleanup_tenant(db, settings, tenant_id)
        assert cleaned["cleaned"] == moved["from"]
    async with db.system() as conn:
        left = (
            await conn.execute(
                text("SELECT count(*) FROM pg_namespace WHERE nspname = :n"), {"n": schema_name(tenant_id)}
            )
        ).scalar_one()
    assert left == 0
    conn = await _server("postgres")
    try:
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", database_name(TEST_DB, tenant_id)
        )
    finally:
        await conn.close()


async def test_a_write_that_reaches_the_old_copy_after_a_move_is_refused_retryably(
    db: Database, settings: Settings
) -> None:
    tenant_id = await _tenant(db)
    await _put(db, tenant_id, "before")
    stale = Database(settings)  # another replica: it has not heard of the move (no listener here)
    try:
        assert await _keys(stale, tenant_id) == ["before"]  # caches "shared"
        await tiers.move_tenant(db, settings, tenant_id, SCHEMA)
        with pytest.raises(Unavailable) as refused:
            await _put(stale, tenant_id, "before", "overwritten late")
        assert refused.value.code == "tenant_moving"
        await _put(stale, tenant_id, "after")  # it forgot, and now writes where the tenant lives
    finally:
        await stale.dispose()
    assert await _keys(db, tenant_id) == ["after", "before"]


@pytest.mark.parametrize("hold_ms", [0, 2000], ids=["refused-at-once", "held-briefly"])
async def test_calls_during_a_move_are_refused_retryably_or_held_and_none_is_lost_or_doubled(
    db: Database, settings: Settings, hold_ms: int
) -> None:
    tenant_id = await _tenant(db)
    for i in range(200):
        await _put(db, tenant_id, f"seed{i:03}")
    held = settings.model_copy(update={"tier_move_hold_ms": hold_ms})
    here = Database(held)  # the replica that runs the move (it hears of it at each commit)
    stale = Database(held)  # a replica that hears of the move only through the fence
    written: list[str] = []
    refused: list[str] = []

    async def writer(source: Database, prefix: str) -> None:
        for i in range(40):
            key = f"{prefix}{i:02}"
            try:
                await _put(source, tenant_id, key)
                written.append(key)
            except Unavailable as exc:
                refused.append(exc.code)
            await asyncio.sleep(0)

    try:
        await _keys(stale, tenant_id)
        await asyncio.gather(
            writer(here, "a"),
            writer(stale, "b"),
            tiers.move_tenant(here, settings, tenant_id, DATABASE),
        )
    finally:
        await here.dispose()
        await stale.dispose()
    db.router.forget(tenant_id)  # the fixture's replica has no listener to hear of the move
    keys = await _keys(db, tenant_id)
    assert sorted(k for k in keys if not k.startswith("seed")) == sorted(written)
    assert len(keys) == len(set(keys)) == 200 + len(written)
    assert set(refused) <= {"tenant_moving"}
    if not hold_ms:
        assert refused  # the move did overlap the calls, and refused them retryably


async def test_a_copy_on_an_older_revision_is_refused_with_a_retryable_error(db: Database, settings: Settings) -> None:
    tenant_id = await _tenant(db)
    await tiers.move_tenant(db, settings, tenant_id, SCHEMA)
    async with db.system() as conn:
        await conn.execute(text("UPDATE tenants SET placement_revision = 0 WHERE id = :t"), {"t": tenant_id})
    db.router.forget(tenant_id)
    try:
        with pytest.raises(Unavailable) as refused:
            await _keys(db, tenant_id)
        assert refused.value.code == "tenant_not_migrated"
    finally:  # its copy is really on HEAD: leave no record saying otherwise for `migrate` to trip on
        async with db.system() as conn:
            restore = text("UPDATE tenants SET placement_revision = :r WHERE id = :t")
            await conn.execute(restore, {"r": tier_schema.HEAD, "t": tenant_id})
        db.router.forget(tenant_id)


async def test_the_engine_lru_is_bounded_by_entries_and_budget_and_evicts_idle_ones(settings: Settings) -> None:
    now = [0.0]
    cache = EngineCache(entries=3, idle_seconds=60, budget=4, pool_size=2, clock=lambda: now[0])
    url = settings.app_database_url
    first = cache.engine(url + "?application_name=a")
    assert cache.engine(url + "?application_name=a") is first
    cache.engine(url + "?application_name=b")
    cache.engine(url + "?application_name=c")  # the budget (4 connections = 2 pools) evicts the oldest
    assert cache.status()["open_pools"] == 2
    assert cache.evictions == 1
    now[0] = 120.0
    cache.engine(url + "?application_name=d")  # idle past the TTL: both others closed
    assert cache.status()["open_pools"] == 1
    assert cache.evictions == 3
    await cache.dispose()
