"""Tenants on all three isolation tiers at once, through the gateway: each sees only its own data,
a key of one tier cannot name a tenant of another, and `/health?tenant=` proves the real tier."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from sqlalchemy import text

from tenantry.db.engine import Database
from tenantry.db.router import database_name
from tests.audit.test_trail import trail
from tests.conftest import OPS, TEST_DB, Admin, TenantHandle, eventually
from tests.gateway.test_isolation import call

TIERS = ("shared", "schema", "database")


async def _tiered(admin: Admin, tier: str) -> TenantHandle:
    r = await admin.http.post("/api/tenants", json={"name": f"{tier}-{uuid.uuid4().hex[:6]}", "tier": tier})
    assert r.status_code == 201, r.text
    assert r.json()["tier"] == tier
    k = await admin.http.post(f"/api/tenants/{r.json()['id']}/keys", json={"name": "test"})
    assert k.status_code == 201, k.text
    return TenantHandle(id=r.json()["id"], key=k.json()["secret"], key_id=k.json()["id"])


@pytest.fixture
async def tiered(admin: Admin) -> dict[str, TenantHandle]:
    return {tier: await _tiered(admin, tier) for tier in TIERS}


async def test_tenants_on_three_tiers_each_see_only_their_own_data(
    gateway_url: str, tiered: dict[str, TenantHandle]
) -> None:
    url = f"{gateway_url}/mcp"
    for tier, tenant in tiered.items():
        put = await call(url, tenant.headers, "http", "data_put", {"key": "secret", "value": {"tier": tier}})
        assert not put.is_error, put
    for tier, tenant in tiered.items():
        got = await call(url, tenant.headers, "http", "data_get", {"key": "secret"})
        assert got.structured_content["value"] == {"tier": tier}
        listed = await call(url, tenant.headers, "http", "data_list", {})
        assert listed.structured_content["keys"] == [{"key": "secret", **listed.structured_content["keys"][0]}]
        health = await call(url, tenant.headers, "http", "health_check", {})
        assert health.structured_content["tenant_id"] == tenant.id
        assert health.structured_content["keys_stored"] == 1


async def test_a_shared_tier_key_naming_a_schema_tier_tenant_is_refused(
    http: httpx.AsyncClient, tiered: dict[str, TenantHandle]
) -> None:
    for mine, theirs in (("shared", "schema"), ("schema", "database"), ("database", "shared")):
        headers = {"Tenant-ID": tiered[theirs].id, "Authorization": f"Bearer {tiered[mine].key}"}
        r = await http.post(
            "/mcp",
            headers={**headers, "Accept": "application/json, text/event-stream"},
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "data_list", "arguments": {}},
            },
        )
        assert r.status_code == 403, (mine, theirs)
        assert r.json()["error"] == "tenant_mismatch"


async def test_tenant_health_names_the_tier_and_runs_the_canary_in_it(
    http: httpx.AsyncClient, gateway_url: str, tiered: dict[str, TenantHandle]
) -> None:
    for tier, tenant in tiered.items():
        await call(f"{gateway_url}/mcp", tenant.headers, "http", "data_put", {"key": "k", "value": 1})
        r = await http.get("/health", params={"tenant": tenant.id}, headers=OPS)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tenant"]["tier"] == tier
        canary = body["checks"]["rls_canary"]
        assert canary == {"status": "ok", "tier": tier, "own_rows": 1, "expected_rows": 1, "foreign_rows_visible": 0}
        assert body["checks"]["quotas"]["storage_keys"]["used"] == 1
    pools = (await http.get("/health", headers=OPS)).json()["checks"]["database"]["pool"]["tiers"]
    assert pools["open_pools"] >= 1
    assert {"connections", "evictions", "budget"} <= set(pools)


async def test_an_admin_moves_a_tenant_over_rest_and_its_agent_keeps_its_data(
    admin: Admin, gateway_url: str, tiered: dict[str, TenantHandle]
) -> None:
    tenant = tiered["shared"]
    await call(f"{gateway_url}/mcp", tenant.headers, "http", "data_put", {"key": "kept", "value": [1, 2]})
    r = await admin.http.post(f"/api/tenants/{tenant.id}/move", json={"tier": "schema"})
    assert r.status_code == 200, r.text
    assert r.json()["verified"]["tenant_data"]["rows"] == 1
    got = await call(f"{gateway_url}/mcp", tenant.headers, "http", "data_get", {"key": "kept"})
    assert got.structured_content["value"] == [1, 2]
    shown = (await admin.http.get(f"/api/tenants/{tenant.id}/tier")).json()
    assert shown["tier"] == "schema"
    assert shown["retired"] == {"tier": "shared", "name": None}
    again = await admin.http.post(f"/api/tenants/{tenant.id}/move", json={"tier": "database"})
    assert again.status_code == 409
    assert again.json()["error"] == "cleanup_pending"
    cleaned = await admin.http.post(f"/api/tenants/{tenant.id}/cleanup")
    assert cleaned.json()["cleaned"] == "shared"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"tier": "moon"}, "invalid_request"),
        ({"tier": "schema", "database_url": "postgresql+asyncpg://u@h/d"}, "invalid_database_url"),
        ({"tier": "database", "database_url": "mysql://u@h/d"}, "invalid_database_url"),
        ({"tier": "database", "database_url": "postgresql+asyncpg://u@h\x00/d"}, "invalid_database_url"),
        ({"tier": "database", "database_url": "postgresql+asyncpg://u@127.0.0.1:1/d"}, "database_unreachable"),
    ],
)
async def test_a_bad_move_is_a_clear_400_and_changes_nothing(
    admin: Admin, tiered: dict[str, TenantHandle], body: dict[str, str], code: str
) -> None:
    tenant = tiered["schema"]
    r = await admin.http.post(f"/api/tenants/{tenant.id}/move", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == code
    assert (await admin.http.get(f"/api/tenants/{tenant.id}/tier")).json()["tier"] == "schema"


async def test_offboarding_archives_a_tier_tenants_data_into_the_shared_tables_and_drops_its_copy(
    admin: Admin, gateway_url: str, db: Database, tiered: dict[str, TenantHandle]
) -> None:
    tenant = tiered["database"]
    await call(f"{gateway_url}/mcp", tenant.headers, "http", "data_put", {"key": "archived", "value": 1})
    r = await admin.http.delete(f"/api/tenants/{tenant.id}")
    assert r.status_code == 200, r.text
    shown = (await admin.http.get(f"/api/tenants/{tenant.id}/tier")).json()
    assert shown["tier"] == "shared"
    assert shown["retired"] is None
    async with db.system() as conn:
        archived = (
            await conn.execute(text("SELECT key FROM tenant_data WHERE tenant_id = :t"), {"t": tenant.id})
        ).scalars()
        dropped = (
            await conn.execute(
                text("SELECT count(*) FROM pg_database WHERE datname = :n"),
                {"n": database_name(TEST_DB, uuid.UUID(tenant.id))},
            )
        ).scalar_one()
    assert list(archived) == ["archived"]
    assert dropped == 0
    # Its trail came back with it (a trail outlives its tenant), whole: the call is there and the chain verifies.
    records = await trail(admin, tenant.id, tool="data_put")
    assert [r["outcome"] for r in records] == ["ok"]
    verified = (await admin.http.get(f"/api/tenants/{tenant.id}/audit/verify")).json()
    assert verified["intact"], verified
    async with db.system() as conn:
        shared = await conn.execute(
            text("SELECT count(*) FROM public.audit_records WHERE tenant_id = :t"), {"t": tenant.id}
        )
        assert shared.scalar_one() == verified["head_seq"]


async def test_a_tier_tenants_calls_are_audited_in_its_copy_and_rest_lists_exports_and_verifies_them(
    admin: Admin, gateway_url: str, db: Database, tiered: dict[str, TenantHandle]
) -> None:
    for tier in ("schema", "database"):
        tenant = tiered[tier]
        for n in range(3):
            put = await call(f"{gateway_url}/mcp", tenant.headers, "http", "data_put", {"key": f"k{n}", "value": n})
            assert not put.is_error, put
        records = await trail(admin, tenant.id, tool="data_put")
        assert [(r["decision"], r["outcome"]) for r in records] == [("admitted", "ok")] * 3
        base = f"/api/tenants/{tenant.id}/audit"
        exported = await admin.http.get(f"{base}/export", params={"tool": "data_put"})
        assert exported.status_code == 200, exported.text
        assert sorted(json.loads(line)["id"] for line in exported.text.splitlines()) == sorted(r["id"] for r in records)
        verified = (await admin.http.get(f"{base}/verify")).json()
        assert verified["intact"], verified
        assert verified["checked"] == verified["head_seq"] >= 3
        tenant_id = uuid.UUID(tenant.id)
        async with db.system_data(tenant_id) as conn:  # the records are in the tenant's own copy...
            kept = await conn.execute(text("SELECT count(*) FROM audit_records WHERE tenant_id = :t"), {"t": tenant_id})
            assert kept.scalar_one() == verified["head_seq"]
        async with db.system() as conn:  # ...and none in the shared tables (its usage events are there)
            shared = await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM public.audit_records WHERE tenant_id = :t),"
                    " (SELECT count(*) FROM usage_events WHERE tenant_id = :t AND tool = 'data_put')"
                ),
                {"t": tenant_id},
            )
            assert tuple(shared.one()) == (0, 3)
        # A refused call is counted in the tenant's usage report, from the roll-ups kept in its copy.
        refused = await call(f"{gateway_url}/mcp", tenant.headers, "http", "data_put", {"key": "no value"})
        assert refused.is_error

        async def reported(tenant: TenantHandle = tenant) -> dict[str, int]:
            r = await admin.http.get(f"/api/tenants/{tenant.id}/report")
            assert r.status_code == 200, r.text
            found: dict[str, int] = r.json()["totals"]["refusals"]
            return found

        assert await eventually(reported, what="the refusal in the report") == {"invalid_arguments": 1}
