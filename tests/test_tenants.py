"""A tenant's lifecycle reaches every replica: suspension, plan and limits, and revoked keys.

Each replica caches what a credential resolves to. These tests give the
replicas a cache TTL of five minutes, so only the change announcements
(`tenants.watch`, migration 0007) can explain a change seen within seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text

from tenantry.app import create_app
from tenantry.db.engine import Database, note_tenant_changed
from tenantry.settings import Settings
from tests import conftest
from tests.conftest import ADMIN_KEY, Admin, TenantHandle, eventually, serve_asgi
from tests.federation.test_cli import run as cli

LONG_TTL = 300.0


@pytest.fixture
def replica(settings: Settings) -> Iterator[str]:
    """A second gateway on the same database, trusting cached credentials for five minutes."""
    with serve_asgi(create_app(conftest.test_settings(auth_cache_ttl_seconds=LONG_TTL))) as (url, _server):
        yield url


async def call_status(base_url: str, tenant: TenantHandle) -> int:
    """The HTTP status of a tool call through the REST bridge."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        r = await http.post(f"/api/tenant/{tenant.id}/tool", json={"method": "health_check"}, headers=tenant.headers)
    return r.status_code


async def refused_with(base_url: str, tenant: TenantHandle, status: int) -> bool:
    return await call_status(base_url, tenant) == status


async def test_a_tenant_suspended_through_one_replica_is_refused_by_another_within_a_second(
    replica: str, admin: Admin
) -> None:
    tenant = await admin.create_tenant()
    assert await call_status(replica, tenant) == 200  # cached on the replica now, for five minutes
    r = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"status": "suspended"})
    assert r.status_code == 200, r.text
    await eventually(lambda: refused_with(replica, tenant, 403), within=1.5, what="the suspension")
    r = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"status": "active"})
    await eventually(lambda: refused_with(replica, tenant, 200), within=1.5, what="the reactivation")


async def test_the_replica_that_makes_a_change_applies_it_to_the_very_next_request(replica: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=replica, headers=headers, timeout=10) as http:
        tenant = await Admin(http).create_tenant()
        assert await call_status(replica, tenant) == 200
        assert (await http.patch(f"/api/tenants/{tenant.id}", json={"status": "suspended"})).status_code == 200
        assert await call_status(replica, tenant) == 403  # no waiting: this process forgot at commit
        assert (await http.delete(f"/api/tenants/{tenant.id}/keys/{tenant.key_id}")).status_code == 200
        assert (await http.patch(f"/api/tenants/{tenant.id}", json={"status": "active"})).status_code == 200
        assert await call_status(replica, tenant) == 401  # the revoked key


async def test_a_key_revoked_with_the_cli_is_refused_by_a_running_gateway_within_a_second(
    replica: str, admin: Admin, settings: Settings
) -> None:
    tenant = await admin.create_tenant()
    assert await call_status(replica, tenant) == 200
    result = cli(settings, "key", "revoke", "--tenant", tenant.id, tenant.key_id)
    assert result.returncode == 0, result.stderr
    await eventually(lambda: refused_with(replica, tenant, 401), within=1.5, what="the revocation")


async def test_limits_changed_by_hand_in_sql_reach_a_running_gateway_within_a_second(
    replica: str, admin: Admin, db: Database
) -> None:
    tenant = await admin.create_tenant()
    assert await call_status(replica, tenant) == 200
    async with db.system() as conn:  # no lifecycle function: only the trigger can tell the gateway
        await conn.execute(
            text("""UPDATE tenants SET limits = '{"calls_per_window": 0}' WHERE id = :id"""), {"id": tenant.id}
        )
    await eventually(lambda: refused_with(replica, tenant, 429), within=1.5, what="the new limit")


async def test_a_change_is_told_to_this_process_only_when_its_transaction_commits(db: Database) -> None:
    heard: list[uuid.UUID] = []
    db.on_tenant_changed = heard.append
    tenant_id = uuid.uuid4()

    async def change_then_fail() -> None:
        async with db.system() as conn:
            note_tenant_changed(conn, tenant_id)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await change_then_fail()
    assert heard == []
    async with db.system() as conn:  # the pooled connection carries nothing over from the rollback
        pass
    assert heard == []
    async with db.system() as conn:
        note_tenant_changed(conn, tenant_id)
        note_tenant_changed(conn, tenant_id)
    assert heard == [tenant_id]
