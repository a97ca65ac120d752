"""`max_upstreams`: creating an upstream past the plan's limit is refused (REST and CLI), exactly under races."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
from sqlalchemy import text

from tenantry.db.engine import Database
from tenantry.settings import Settings
from tests.conftest import Admin, TenantHandle
from tests.federation.test_cli import run


async def tenant_with(admin: Admin, **limits: Any) -> TenantHandle:
    tenant = await admin.create_tenant(plan="enterprise")
    r = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": limits})
    assert r.status_code == 200, r.text
    return tenant


async def create(admin: Admin, tenant: TenantHandle, name: str) -> httpx.Response:
    # Nothing listens on port 9: registering does not contact the upstream.
    body = {"name": name, "url": "http://127.0.0.1:9/mcp"}
    return await admin.http.post(f"/api/tenants/{tenant.id}/upstreams", json=body)


async def count(db: Database, tenant: TenantHandle) -> int:
    async with db.system() as conn:
        query = text("SELECT count(*) FROM upstreams WHERE tenant_id = :t")
        return int((await conn.execute(query, {"t": uuid.UUID(tenant.id)})).scalar_one())


async def test_an_upstream_past_the_limit_is_refused_and_nothing_is_written(admin: Admin, db: Database) -> None:
    tenant = await tenant_with(admin, max_upstreams=2)
    assert (await create(admin, tenant, "one")).status_code == 201
    assert (await create(admin, tenant, "two")).status_code == 201
    refused = await create(admin, tenant, "three")
    assert refused.status_code == 409
    body = refused.json()
    assert body["error"] == "upstream_quota_exceeded"
    assert (body["quota"], body["used"], body["limit"]) == ("max_upstreams", 2, 2)
    assert await count(db, tenant) == 2
    usage = (await admin.http.get(f"/api/tenants/{tenant.id}/usage")).json()
    assert usage["quotas"]["max_upstreams"] == {"used": 2, "limit": 2}


async def test_concurrent_creates_make_exactly_the_limit(admin: Admin, db: Database) -> None:
    tenant = await tenant_with(admin, max_upstreams=3)
    answers = await asyncio.gather(*(create(admin, tenant, f"up{i}") for i in range(12)))
    codes = [a.status_code for a in answers]
    assert codes.count(201) == 3
    assert {a.json()["error"] for a in answers if a.status_code != 201} == {"upstream_quota_exceeded"}
    assert await count(db, tenant) == 3


async def test_a_raised_limit_applies_at_once_and_a_removal_frees_a_place(admin: Admin, db: Database) -> None:
    tenant = await tenant_with(admin, max_upstreams=1)
    first = await create(admin, tenant, "one")
    assert first.status_code == 201
    assert (await create(admin, tenant, "two")).status_code == 409
    deleted = await admin.http.delete(f"/api/tenants/{tenant.id}/upstreams/{first.json()['id']}")
    assert deleted.status_code == 200
    assert (await create(admin, tenant, "two")).status_code == 201
    assert (
        await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": {"max_upstreams": 2}})
    ).status_code == 200
    assert (await create(admin, tenant, "three")).status_code == 201
    assert await count(db, tenant) == 2


async def test_the_cli_refuses_past_the_limit_with_the_code(settings: Settings, admin: Admin, db: Database) -> None:
    tenant = await tenant_with(admin, max_upstreams=1)
    add = ["upstream", "add", "--tenant", tenant.id, "--url", "http://127.0.0.1:9/mcp", "--json"]
    assert run(settings, *add, "--name", "one").returncode == 0
    refused = run(settings, *add, "--name", "two")
    assert refused.returncode == 2
    error = json.loads(refused.stderr)
    assert error["error"] == "upstream_quota_exceeded"
    assert "allows 1" in error["detail"]
    assert await count(db, tenant) == 1
