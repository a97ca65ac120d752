"""Migrations go up, down and up again on a fresh database."""

from __future__ import annotations

import os

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
    rollups = {"usage_events_rollup", "audit_chain_heads_rollup"}
    try:
        await migrate(url)
        assert await _triggers(name) == installed | credentials | governance | rollups
        await migrate(url, revision="0010", downgrade=True)
        assert await _triggers(name) == installed | credentials | governance
        assert not {"usage_rollups", "refusal_rollups"} & await _tables(name)
        await migrate(url, revision="0007", downgrade=True)
        assert await _triggers(name) == installed | credentials
        assert not {"tenant_policies", "kills"} & await _tables(name)
        await migrate(url, revision="0006", downgrade=True)
        assert await _triggers(name) == installed
        await migrate(url, revision="0004", downgrade=True)
        assert await _triggers(name) == set()
        assert "upstreams" in await _tables(name)
        await migrate(url)
        assert await _triggers(name) == installed | credentials | governance | rollups
    finally:
        await recreate_database(name, create=False)
