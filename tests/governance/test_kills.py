"""The kill switch as admins and agents meet it: each scope refuses new calls with `killed`, calls in
flight are cancelled and not billed, another replica follows within a second, lifting is explicit,
and bad requests change nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tenantry.client import connect
from tenantry.db.engine import Database
from tenantry.settings import Settings
from tests.conftest import Admin, TenantHandle, eventually, serve
from tests.governance.test_governance_gateway import bridge, key_for


@pytest.fixture(autouse=True)
async def no_kill_outlives_its_test(admin: Admin) -> Any:
    """The gateway is shared by the whole run: whatever a test killed is lifted after it, pass or fail."""
    yield
    for live in (await admin.http.get("/api/kills")).json()["kills"]:
        await admin.http.delete(f"/api/kills/{live['id']}")


async def kill(admin: Admin, **body: Any) -> dict[str, Any]:
    r = await admin.http.post("/api/kills", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def lift(admin: Admin, kill_id: str) -> None:
    assert (await admin.http.delete(f"/api/kills/{kill_id}")).status_code == 200


async def status_of(
    http: httpx.AsyncClient, tenant: TenantHandle, headers: dict[str, str], tool: str = "data_list"
) -> str:
    r = await bridge(http, tenant, headers, tool, {})
    return "ok" if r.status_code == 200 else str(r.json()["error"])


async def test_each_scope_stops_exactly_what_it_names_until_lifted(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle, tenant_b: TenantHandle, http: httpx.AsyncClient
) -> None:
    rogue = await key_for(admin, tenant_a, "rogue-agent", "writer")
    calm = await key_for(admin, tenant_a, "calm-agent", "writer")
    other = tenant_b.headers
    rogue_key_id = (await admin.http.get(f"/api/tenants/{tenant_a.id}/keys")).json()["keys"][-2]["id"]

    async def statuses() -> tuple[str, str, str]:
        return (
            await status_of(http, tenant_a, rogue),
            await status_of(http, tenant_a, calm),
            await status_of(http, tenant_b, other),
        )

    assert await statuses() == ("ok", "ok", "ok")
    cases = [
        ({"scope": "key", "tenant_id": tenant_a.id, "target": rogue_key_id}, ("killed", "ok", "ok")),
        ({"scope": "subject", "tenant_id": tenant_a.id, "target": "rogue-agent"}, ("killed", "ok", "ok")),
        ({"scope": "tool", "tenant_id": tenant_a.id, "target": "data_list"}, ("killed", "killed", "ok")),
        ({"scope": "tool", "target": "data_list"}, ("killed", "killed", "killed")),
        ({"scope": "tenant", "tenant_id": tenant_a.id}, ("killed", "killed", "ok")),
    ]
    for body, expected in cases:
        made = await kill(admin, reason="incident 42", **body)
        assert await statuses() == expected, body
        r = await bridge(http, tenant_a, rogue, "data_list", {})
        assert r.status_code == 403
        assert r.json()["kill"] == made["id"]
        assert "incident 42" in r.json()["detail"]
        await lift(admin, made["id"])
        assert await statuses() == ("ok", "ok", "ok"), body
    # A tool kill leaves the tenant's other tools alone.
    made = await kill(admin, scope="tool", tenant_id=tenant_a.id, target="data_put")
    assert await status_of(http, tenant_a, calm, "data_list") == "ok"
    async with connect(f"{gateway_url}/mcp", calm) as client:
        refused = await client.call_tool("data_put", {"key": "k", "value": 1})
    assert refused.is_error
    assert (refused.structured_content or {})["error"] == "killed"
    await lift(admin, made["id"])
    listed = (await admin.http.get("/api/kills", params={"tenant_id": tenant_a.id, "lifted": "true"})).json()["kills"]
    assert len(listed) == 6
    assert all(k["lifted_at"] for k in listed)
    assert (await admin.http.get("/api/kills")).json()["kills"] == []


async def test_a_call_in_flight_is_cancelled_told_killed_and_not_billed(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle, fixture_upstream: Any, db: Database
) -> None:
    upstream, url = fixture_upstream
    body = {"name": "fx", "url": url, "headers": {"Authorization": "Bearer alpha"}}
    assert (await admin.http.post(f"/api/tenants/{tenant_a.id}/upstreams", json=body)).status_code == 201
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        hanging = asyncio.create_task(client.call_tool("fx__hang", {}))
        await eventually(lambda: _holds(upstream), what="the upstream holding the call")
        made = await kill(admin, scope="tool", tenant_id=tenant_a.id, target="fx__hang", reason="stuck")
        async with asyncio.timeout(5):
            result = await hanging
    assert result.is_error
    assert (result.structured_content or {})["error"] == "killed"
    assert (result.structured_content or {})["kill"] == made["id"]

    async def recorded() -> list[Any]:
        async with db.system() as conn:
            rows = await conn.execute(
                text("SELECT tool, outcome FROM usage_events WHERE tenant_id = :t"), {"t": uuid.UUID(tenant_a.id)}
            )
            return [tuple(row) for row in rows]

    assert await eventually(recorded, what="the killed call in the ledger") == [("fx__hang", "killed")]
    usage = (await admin.http.get(f"/api/tenants/{tenant_a.id}/usage")).json()
    assert usage["totals"]["billable_units"] == 0
    assert usage["tools"]["fx__hang"]["calls"] == 1
    await lift(admin, made["id"])


async def _holds(upstream: Any) -> bool:
    return getattr(upstream, "_release", None) is not None


async def test_a_kill_reaches_another_replica_within_a_second_and_cancels_its_calls(
    settings: Settings, gateway_url: str, admin: Admin, tenant_a: TenantHandle
) -> None:
    with serve(settings) as other:
        async with httpx.AsyncClient(base_url=other, timeout=30) as replica:
            assert await status_of(replica, tenant_a, tenant_a.headers) == "ok"
            made = await kill(admin, scope="tenant", tenant_id=tenant_a.id)

            async def killed() -> bool:
                return await status_of(replica, tenant_a, tenant_a.headers) == "killed"

            await eventually(killed, within=1.0, what="the kill on the other replica")
            await lift(admin, made["id"])

            async def lifted() -> bool:
                return await status_of(replica, tenant_a, tenant_a.headers) == "ok"

            await eventually(lifted, within=1.0, what="the lift on the other replica")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"scope": "tenant"}, 400, "invalid_request"),
        ({"scope": "key", "tenant_id": "{tenant}"}, 400, "invalid_request"),
        ({"scope": "key", "tenant_id": "{tenant}", "target": "not-a-key"}, 404, "key_not_found"),
        ({"scope": "subject", "tenant_id": str(uuid.uuid4()), "target": "x"}, 404, "tenant_not_found"),
        ({"scope": "subject", "target": "x"}, 400, "invalid_request"),
        ({"scope": "galaxy", "tenant_id": "{tenant}", "target": "x"}, 400, "invalid_request"),
        ({"scope": "subject", "tenant_id": "{tenant}", "target": "x\u0000"}, 400, "invalid_request"),
        ({"scope": "subject", "tenant_id": "{tenant}", "target": "x", "reason": "r" * 501}, 400, "invalid_request"),
    ],
)
async def test_a_bad_kill_is_refused_and_stops_nothing(
    admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient, body: dict[str, Any], status: int, code: str
) -> None:
    body = {k: v.replace("{tenant}", tenant_a.id) if isinstance(v, str) else v for k, v in body.items()}
    r = await admin.http.post("/api/kills", json=body)
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert await status_of(http, tenant_a, tenant_a.headers) == "ok"
    assert (await admin.http.get("/api/kills")).json()["kills"] == []


async def test_lifting_is_explicit_and_only_once(admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient) -> None:
    made = await kill(admin, scope="tenant", tenant_id=tenant_a.id)
    assert (await http.post("/api/kills", json={"scope": "tool", "target": "x"})).status_code == 401
    await lift(admin, made["id"])
    again = await admin.http.delete(f"/api/kills/{made['id']}")
    assert (again.status_code, again.json()["error"]) == (409, "kill_already_lifted")
    missing = await admin.http.delete(f"/api/kills/{uuid.uuid4()}")
    assert (missing.status_code, missing.json()["error"]) == (404, "kill_not_found")
