"""Invariant 1: the database enforces tenancy, whatever the queries forget."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import Database
from tenantry.settings import Settings

COMMANDS = {"SELECT", "INSERT", "UPDATE", "DELETE"}
# The credential lookup runs before a tenant is known, by key hash: a global index. An issuer belongs to
# one tenant: its uniqueness is global by design (a token of A's issuer must never be B's).
GLOBAL_INDEXES = {"api_keys_key_hash_key", "tenant_identity_providers_issuer_key"}
# Append-only tables: the application role may read and append, nothing else (no policy, no grant).
APPEND_ONLY = {"audit_records": {"SELECT", "INSERT"}, "audit_chain_heads": {"SELECT", "INSERT", "UPDATE"}}


async def test_every_table_with_tenant_id_has_forced_rls_and_a_policy_per_command(db: Database) -> None:
    async with db.system() as conn:
        tables = (
            await conn.execute(
                text(
                    """
                    SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
                      AND EXISTS (SELECT 1 FROM pg_attribute a
                                  WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
                    """
                )
            )
        ).all()
        policies = (
            await conn.execute(text("SELECT tablename, cmd, roles FROM pg_policies WHERE schemaname = 'public'"))
        ).all()
    assert {t.relname for t in tables} >= {"api_keys", "tenant_data"}
    for table in tables:
        assert table.relrowsecurity, f"{table.relname}: RLS not enabled"
        assert table.relforcerowsecurity, f"{table.relname}: RLS not forced"
        app_commands = {p.cmd for p in policies if p.tablename == table.relname and db.app_role in p.roles}
        expected = APPEND_ONLY.get(table.relname, COMMANDS)
        assert app_commands == expected, f"{table.relname}: app role policies cover {app_commands}"


async def test_tenants_table_is_under_forced_rls_too(db: Database) -> None:
    async with db.system() as conn:
        row = (
            await conn.execute(
                text("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'tenants'")
            )
        ).one()
    assert row.relrowsecurity
    assert row.relforcerowsecurity


async def test_every_index_on_a_tenant_table_leads_with_tenant_id(db: Database) -> None:
    async with db.system() as conn:
        rows = (
            await conn.execute(
                text(
                    """
                    SELECT i.indexrelid::regclass::text AS index, t.relname AS table,
                           (SELECT attname FROM pg_attribute
                            WHERE attrelid = t.oid AND attnum = i.indkey[0]) AS first_column
                    FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
                    JOIN pg_namespace n ON n.oid = t.relnamespace
                    WHERE n.nspname = 'public' AND EXISTS (
                        SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.oid AND a.attname = 'tenant_id')
                    """
                )
            )
        ).all()
    assert rows
    for row in rows:
        if row.index not in GLOBAL_INDEXES:
            assert row.first_column == "tenant_id", f"{row.index} on {row.table} leads with {row.first_column}"


async def test_app_role_is_not_superuser_owner_or_bypassrls(db: Database) -> None:
    async with db.system() as conn:
        role = (
            await conn.execute(
                text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": db.app_role}
            )
        ).one()
        owners = (
            (await conn.execute(text("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")))
            .scalars()
            .all()
        )
    assert not role.rolsuper
    assert not role.rolbypassrls
    assert db.app_role not in owners


async def _seed(db: Database, tenant: uuid.UUID, key: str) -> None:
    async with db.system() as conn:
        await conn.execute(
            text("INSERT INTO tenants (id, name) VALUES (:t, 'seed') ON CONFLICT DO NOTHING"), {"t": tenant}
        )
    async with db.tenant(tenant) as conn:
        await conn.execute(
            text("INSERT INTO tenant_data (tenant_id, key, value, size_bytes) VALUES (:t, :k, '1', 1)"),
            {"t": tenant, "k": key},
        )


async def test_with_no_tenant_bound_the_app_role_sees_no_rows(db: Database) -> None:
    await _seed(db, uuid.uuid4(), "x")
    async with db.unbound() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM tenant_data"))).scalar_one() == 0
        assert (await conn.execute(text("SELECT count(*) FROM tenants"))).scalar_one() == 0


async def test_a_bound_tenant_sees_only_its_own_rows(db: Database) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await _seed(db, a, "mine")
    await _seed(db, b, "theirs")
    async with db.tenant(a) as conn:
        keys = (await conn.execute(text("SELECT key FROM tenant_data"))).scalars().all()
        updated = (await conn.execute(text("UPDATE tenant_data SET value = '2' WHERE key = 'theirs'"))).rowcount
        deleted = (await conn.execute(text("DELETE FROM tenant_data WHERE tenant_id = :b"), {"b": b})).rowcount
    assert keys == ["mine"]
    assert updated == 0
    assert deleted == 0
    async with db.tenant(b) as conn:
        assert (await conn.execute(text("SELECT value FROM tenant_data WHERE key = 'theirs'"))).scalar_one() == 1


async def test_a_tenant_cannot_write_rows_for_another_tenant(db: Database) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await _seed(db, a, "seed")
    await _seed(db, b, "seed")
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.tenant(a) as conn:
            await conn.execute(
                text("INSERT INTO tenant_data (tenant_id, key, value, size_bytes) VALUES (:b, 'x', '1', 1)"),
                {"b": b},
            )
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.tenant(a) as conn:
            await conn.execute(text("UPDATE tenant_data SET tenant_id = :b"), {"b": b})


async def test_the_binding_ends_with_the_transaction_on_a_reused_connection(settings: Settings) -> None:
    # One pooled connection: bind, commit, then query again on the same connection with nothing bound.
    one = Database(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    try:
        tenant = uuid.uuid4()
        await _seed(one, tenant, "k")
        async with one.tenant(tenant) as conn:
            assert (await conn.execute(text("SELECT count(*) FROM tenant_data"))).scalar_one() == 1
        async with one.unbound() as conn:
            assert (await conn.execute(text("SELECT current_setting('tenantry.tenant_id', true)"))).scalar_one() == ""
            assert (await conn.execute(text("SELECT count(*) FROM tenant_data"))).scalar_one() == 0
    finally:
        await one.dispose()


async def test_the_app_role_cannot_touch_api_keys_at_all(db: Database) -> None:
    # Key hashes are read only by the owner during credential lookup.
    with pytest.raises(DBAPIError, match="permission denied"):
        async with db.tenant(uuid.uuid4()) as conn:
            await conn.execute(text("SELECT count(*) FROM api_keys"))
