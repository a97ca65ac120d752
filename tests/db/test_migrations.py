"""Migrations go up, down and up again on a fresh database."""

from __future__ import annotations

import os
import time
import uuid

import asyncpg

from tenantry.db.migrate import migrate
from tests.conftest import SERVER, recreate_database


async def _tables(name: str) -> set[str]:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows} - {"alembic_version"}


async def test_upgrade_downgrade_upgrade_round_trips(services_up: None) -> None:
    name = f"tenantry_migrations_{os.getpid()}"
    await recreate_database(name)
    url = f"{SERVER}/{name}"
    try:
        await migrate(url)
        assert {"tenants", "api_keys", "tenant_data"} <= await _tables(name)
        await migrate(url, revision="base", downgrade=True)
        assert await _tables(name) == set()
        await migrate(url)
        assert {"tenants", "api_keys", "tenant_data"} <= await _tables(name)
    finally:
        await recreate_database(name, create=False)


async def _triggers(name: str) -> set[str]:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
    try:
        rows = await conn.fetch(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
            "UNION ALL SELECT proname FROM pg_proc WHERE proname LIKE 'tenantry_notify_%'"
        )
    finally:
        await conn.close()
    return {r["tgname"] for r in rows}


async def test_the_change_notification_triggers_go_down_and_up_with_their_revision(services_up: None) -> None:
    name = f"tenantry_migrations_notify_{os.getpid()}"
    await recreate_database(name)
    url = f"{SERVER}/{name}"
    installed = {
        "upstreams_notify_change",
        "upstream_tool_pins_notify_change",
        "tenants_notify_status_change",
        "tenantry_notify_upstream_change",
        "tenantry_notify_pin_change",
        "tenantry_notify_tenant_change",
    }
    credentials = {
        "tenants_notify_credentials",
        "api_keys_notify_credentials_update",
        "api_keys_notify_credentials_delete",
        "tenantry_notify_tenant_credentials",
    }
    governance = {
        "tenant_policies_notify",
        "tenant_identity_providers_notify",
        "kills_notify",
        "tenantry_notify_kills",
    }
    storage = {"tenant_data_count_storage"}  # 0011: keeps tenant_storage exact (its function is not a notify)
    rollups = {"usage_events_rollup", "audit_records_rollup", "audit_records_unroll"}  # 0012
    fence = {"tenant_storage_fence"}  # 0014: a moved tenant's old copy refuses writes
    scopes = {"api_keys_notify_credentials_scope"}  # 0017: a key's roles and tools changed
    audit_fence = {"audit_chain_heads_fence"}  # 0018: a moved tenant's old trail refuses appends
    everything = installed | credentials | governance | storage | rollups | fence | scopes | audit_fence
    try:
        await migrate(url)
        assert await _triggers(name) == everything
        await migrate(url, revision="0017", downgrade=True)
        assert await _triggers(name) == everything - audit_fence
        await migrate(url, revision="0013", downgrade=True)
        assert await _triggers(name) == installed | credentials | governance | storage | rollups
        await migrate(url, revision="0011", downgrade=True)
        assert await _triggers(name) == installed | credentials | governance | storage
        assert not {"usage_rollups", "refusal_rollups"} & await _tables(name)
        await migrate(url, revision="0010", downgrade=True)
        assert await _triggers(name) == installed | credentials | governance
        assert "tenant_storage" not in await _tables(name)
        await migrate(url, revision="0007", downgrade=True)
        assert await _triggers(name) == installed | credentials
        assert not {"tenant_policies", "kills"} & await _tables(name)
        await migrate(url, revision="0006", downgrade=True)
        assert await _triggers(name) == installed
        await migrate(url, revision="0004", downgrade=True)
        assert await _triggers(name) == set()
        assert "upstreams" in await _tables(name)
        await migrate(url)
        assert await _triggers(name) == everything
    finally:
        await recreate_database(name, create=False)


async def test_the_storage_revision_counts_what_tenants_already_store(services_up: None) -> None:
    name = f"tenantry_migrations_storage_{os.getpid()}"
    await recreate_database(name)
    url = f"{SERVER}/{name}"
    try:
        await migrate(url, revision="0010")
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
        try:
            tenants = [await conn.fetchval("INSERT INTO tenants (name) VALUES ($1) RETURNING id", n) for n in "ab"]
            rows = [(tenants[0], "k1", '"é"', 4), (tenants[0], "ключ", "[1,2]", 5), (tenants[1], "x", "{}", 2)]
            await conn.executemany(
                "INSERT INTO tenant_data (tenant_id, key, value, size_bytes) VALUES ($1, $2, $3::jsonb, $4)", rows
            )
            await migrate(url)
            counted = {
                r["tenant_id"]: (r["bytes"], r["keys"])
                for r in await conn.fetch("SELECT tenant_id, bytes, keys FROM tenant_storage")
            }
        finally:
            await conn.close()
        # Key bytes in UTF-8 ("ключ" is 8) plus each value's size_bytes.
        assert counted == {tenants[0]: (2 + 4 + 8 + 5, 2), tenants[1]: (1 + 2, 1)}
    finally:
        await recreate_database(name, create=False)


async def test_the_roll_ups_revision_counts_the_events_and_refusals_stored_before_it(services_up: None) -> None:
    name = f"tenantry_migrations_rollups_{os.getpid()}"
    await recreate_database(name)
    url = f"{SERVER}/{name}"
    try:
        await migrate(url, revision="0011")
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
        try:
            tenant = await conn.fetchval("INSERT INTO tenants (name, plan) VALUES ('old', 'free') RETURNING id")
            await conn.execute(
                """
                INSERT INTO usage_events (tenant_id, event_id, tool, units, outcome, latency_ms, occurred_at)
                SELECT $1, gen_random_uuid(), (ARRAY['data_get', 'resource:fx+a://b', 'prompt:fx__p'])[1 + i % 3],
                       1, CASE WHEN i % 7 = 0 THEN 'upstream_error' ELSE 'ok' END, i % 90, now() - i * interval '1 min'
                FROM generate_series(1, 300) AS i
                """,
                tenant,
            )
            await conn.execute(
                "SELECT tenantry_record_audit(ARRAY[$1::uuid], ARRAY[1], ARRAY[$2::json])",
                tenant,
                f'{{"id": "{uuid.uuid4()}", "at": {int(time.time() * 1e6)}, "tr": "direct", "m": "tools/call",'
                ' "tool": "data_get", "d": "refused", "r": "quota_exceeded", "o": "quota_exceeded"}',
            )
        finally:
            await conn.close()
        await migrate(url)
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
        try:
            rolled = await conn.fetch("SELECT * FROM usage_rollups ORDER BY bucket, kind, name, outcome")
            recount = await conn.fetch("SELECT * FROM usage_rollups_recount ORDER BY bucket, kind, name, outcome")
            refusals = await conn.fetch("SELECT kind, name, reason, refusals FROM refusal_rollups")
            assert sum(r["calls"] for r in rolled) == 300
            assert [dict(r) for r in rolled] == [dict(r) for r in recount]
            assert [tuple(r) for r in refusals] == [("tool", "data_get", "quota_exceeded", 1)]
            # A refusal stamped past the partitions made so far lands in the default partition; making its
            # month's partition moves it there (deleted, re-inserted): it is still counted once.
            later = int((time.time() + 150 * 86_400) * 1e6)
            await conn.execute(
                "SELECT tenantry_record_audit(ARRAY[$1::uuid], ARRAY[1], ARRAY[$2::json])",
                tenant,
                f'{{"id": "{uuid.uuid4()}", "at": {later}, "tr": "direct", "m": "tools/list",'
                ' "d": "refused", "r": "rate_limited", "o": "rate_limited"}',
            )
            assert await conn.fetchval("SELECT count(*) FROM audit_records_default") == 1
            moved = await conn.fetchval("SELECT tenantry_audit_partitions(6, 0)")
            assert any("1 records moved in" in line for line in moved)
            refusals = await conn.fetch("SELECT kind, name, reason, refusals FROM refusal_rollups ORDER BY kind")
            recounted = await conn.fetch(
                "SELECT kind, name, reason, refusals FROM refusal_rollups_recount ORDER BY kind"
            )
        finally:
            await conn.close()
        expected = [("request", "tools/list", "rate_limited", 1), ("tool", "data_get", "quota_exceeded", 1)]
        assert [tuple(r) for r in refusals] == [tuple(r) for r in recounted] == expected
    finally:
        await recreate_database(name, create=False)


async def _unusual_indexes(name: str) -> dict[str, str]:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
    try:
        rows = await conn.fetch(
            "SELECT c.relname, pg_get_expr(i.indpred, i.indrelid) AS predicate FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'audit_records'::regclass"
            " AND i.indpred IS NOT NULL"
        )
    finally:
        await conn.close()
    return {r["relname"]: r["predicate"] for r in rows}


async def test_the_trails_refused_and_unusual_records_are_indexed_alone_from_0019(services_up: None) -> None:
    """A page of refusals (or of an outcome other than ok) reads an index of those records only, not the
    whole trail; admitted calls, nearly all records, are in neither index."""
    name = f"tenantry_migrations_unusual_{os.getpid()}"
    await recreate_database(name)
    url = f"{SERVER}/{name}"
    try:
        await migrate(url)
        found = await _unusual_indexes(name)
        assert found == {
            "audit_records_refused": "(decision = 'refused'::text)",
            "audit_records_unusual": "(outcome <> 'ok'::text)",
        }
        await migrate(url, revision="0018", downgrade=True)
        assert await _unusual_indexes(name) == {}
        await migrate(url)
        assert set(await _unusual_indexes(name)) == {"audit_records_refused", "audit_records_unusual"}
    finally:
        await recreate_database(name, create=False)
