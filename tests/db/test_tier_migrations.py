"""`tenantry migrate` for tier copies, and the tier commands, run as an operator runs them."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text

from tenantry import tiers
from tenantry.db import tier_schema
from tenantry.db.engine import Database
from tenantry.db.router import DATABASE, SCHEMA
from tenantry.db.tier_migrate import migrate_tiers, seal_clear_passwords
from tenantry.errors import Unavailable
from tenantry.secrets import SecretBox
from tenantry.settings import Settings
from tests.conftest import free_port
from tests.db.test_tiers import _keys, _put, _tenant
from tests.test_cli import run


def _revision_next(app_role: str) -> list[str]:
    return ["CREATE INDEX tenant_data_recent ON tenant_data (tenant_id, updated_at)"]


async def test_migrate_upgrades_every_tier_copy_reports_a_failure_and_goes_on(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema_tenant, database_tenant, unreachable = await _tenant(db), await _tenant(db), await _tenant(db)
    for tenant_id, tier in ((schema_tenant, SCHEMA), (database_tenant, DATABASE), (unreachable, SCHEMA)):
        await tiers.move_tenant(db, settings, tenant_id, tier)
        await _put(db, tenant_id, "k")
    # The third tenant's database is on a server that is down.
    async with db.system() as conn:
        await conn.execute(
            text(
                "UPDATE tenants SET placement = 'database', placement_name = 'gone', placement_url = :url WHERE id = :t"
            ),
            {"url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gone", "t": unreachable},
        )
    head = tier_schema.HEAD
    monkeypatch.setattr(tier_schema, "REVISIONS", [*tier_schema.REVISIONS, _revision_next])
    monkeypatch.setattr(tier_schema, "HEAD", head + 1)
    db.router.forget(None)

    with pytest.raises(Unavailable) as refused:  # not served against tables it does not know
        await _keys(db, schema_tenant)
    assert refused.value.code == "tenant_not_migrated"

    report = {
        entry["tenant_id"]: entry
        for entry in await migrate_tiers(db)
        if entry["tenant_id"] in {str(schema_tenant), str(database_tenant), str(unreachable)}
    }
    assert report[str(schema_tenant)]["status"] == "ok"
    assert report[str(database_tenant)]["status"] == "ok"
    assert report[str(schema_tenant)]["revision"] == head + 1
    assert report[str(unreachable)]["status"] == "failed"
    assert report[str(unreachable)]["revision"] == head
    assert await _keys(db, schema_tenant) == ["k"]
    assert await _keys(db, database_tenant) == ["k"]
    async with db.system_data(schema_tenant) as conn:
        assert (await conn.execute(text("SELECT to_regclass('tenant_data_recent') IS NOT NULL"))).scalar_one()

    # Run again: the migrated ones are left alone, the failed one is tried again.
    again = await migrate_tiers(db, tenant_id=schema_tenant)
    done = {"tenant_id": str(schema_tenant), "tier": SCHEMA, "from": head + 1, "revision": head + 1, "status": "ok"}
    assert again == [done]


async def test_the_tier_commands_create_move_clean_up_and_migrate(db: Database, settings: Settings) -> None:
    created = run(settings, "tenant", "create", "--name", "cli-tiered", "--tier", "schema", "--json")
    assert created.returncode == 0, created.stderr
    tenant = json.loads(created.stdout)["tenant"]
    assert tenant["tier"] == "schema"
    assert tenant["tier_override"] == "schema"
    tenant_id = uuid.UUID(tenant["id"])
    await _put(db, tenant_id, "kept")

    moved = run(settings, "tenant", "move", tenant["id"], "--tier", "database", "--json")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["rows_copied"] == 1
    assert json.loads(moved.stdout)["old_copy"] == "kept until cleanup"
    cleaned = run(settings, "tenant", "cleanup", tenant["id"], "--json")
    assert json.loads(cleaned.stdout) == {"tenant_id": tenant["id"], "cleaned": "schema"}

    migrated = run(settings, "migrate", "--tenant", tenant["id"], "--json")
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["tiers"][0]["status"] == "ok"
    with pytest.raises(Unavailable) as stale:  # this process has not heard of the moves: retryable, once
        await _keys(db, tenant_id)
    assert stale.value.code == "tenant_moving"
    assert await _keys(db, tenant_id) == ["kept"]


@asynccontextmanager
async def _placed_with_password_in_clear(db: Database) -> AsyncIterator[tuple[uuid.UUID, str]]:
    """A database-tier tenant as one placed before owner passwords were sealed left its row; put back on
    the shared tier after the test (its server is no server: tier maintenance would report it)."""
    tenant_id = await _tenant(db)
    url = "postgresql+asyncpg://owner:pw%40in-clear@127.0.0.1:5432/tenantry_t_elsewhere"
    async with db.system() as conn:
        await conn.execute(
            text(
                "UPDATE tenants SET placement = 'database', placement_name = 'tenantry_t_elsewhere',"
                " placement_url = :url, placement_revision = :head WHERE id = :t"
            ),
            {"url": url, "head": tier_schema.HEAD, "t": tenant_id},
        )
    try:
        yield tenant_id, url
    finally:
        async with db.system() as conn:
            await conn.execute(
                text(
                    "UPDATE tenants SET placement = 'shared', placement_name = NULL, placement_url = NULL,"
                    " placement_secret = NULL WHERE id = :t"
                ),
                {"t": tenant_id},
            )


async def _placement_url(db: Database, tenant_id: uuid.UUID) -> str:
    async with db.system() as conn:
        found = await conn.execute(text("SELECT placement_url FROM tenants WHERE id = :t"), {"t": tenant_id})
        return str(found.scalar_one())


async def test_migrate_seals_an_owner_password_left_in_clear_and_reaches_the_same_server(
    db: Database, settings: Settings
) -> None:
    secrets = SecretBox(settings.secret_keys)
    async with _placed_with_password_in_clear(db) as (tenant_id, url):
        assert await seal_clear_passwords(db, secrets, tenant_id=tenant_id) == [str(tenant_id)]

        stored = await _placement_url(db, tenant_id)
        assert "in-clear" not in stored
        assert stored == "postgresql+asyncpg://owner@127.0.0.1:5432/tenantry_t_elsewhere"
        db.router.forget(tenant_id)
        assert (await db.router.placement(tenant_id)).url == url  # the router's URL is what it was
        assert await seal_clear_passwords(db, secrets, tenant_id=tenant_id) == []  # a repeat seals nothing


async def test_the_migrate_command_reports_what_it_sealed(db: Database, settings: Settings) -> None:
    async with _placed_with_password_in_clear(db) as (tenant_id, _):
        result = run(settings, "migrate", "--tenant", str(tenant_id), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["sealed"] == [str(tenant_id)]
        assert "in-clear" not in await _placement_url(db, tenant_id)
