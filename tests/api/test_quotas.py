"""Every kind of quota, as an operator sees it: used/limit in the usage API and `/health?tenant=`, plan
changes at once, and limits that make no sense refused with a 400 that changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tenantry.client import connect
from tenantry.plans import DEFAULT_PLAN_LIMITS
from tests.conftest import OPS, Admin

KINDS = {
    "calls_per_window",
    "reads_per_window",
    "requests_per_minute",
    "storage_bytes",
    "storage_keys",
    "max_upstreams",
    "max_tools",
}


async def usage_quotas(admin: Admin, tenant_id: str) -> dict[str, Any]:
    r = await admin.http.get(f"/api/tenants/{tenant_id}/usage")
    assert r.status_code == 200, r.text
    quotas: dict[str, Any] = r.json()["quotas"]
    return quotas


async def test_every_kind_shows_as_used_and_limit_in_usage_and_health(
    gateway_url: str, http: httpx.AsyncClient, admin: Admin
) -> None:
    tenant = await admin.create_tenant(plan="free")
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        await client.call_tool("data_put", {"key": "k", "value": "v"})
    free = DEFAULT_PLAN_LIMITS["free"]
    quotas = await usage_quotas(admin, tenant.id)
    assert set(quotas) == KINDS
    assert quotas["calls_per_window"]["used"] == 1
    assert quotas["calls_per_window"]["limit"] == free.calls_per_window
    assert quotas["reads_per_window"] == {**quotas["reads_per_window"], "used": 0, "limit": free.reads_per_window}
    assert quotas["requests_per_minute"]["used"] >= 1
    assert quotas["requests_per_minute"]["limit"] == free.requests_per_minute
    assert quotas["storage_bytes"] == {"used": len("k") + len('"v"'), "limit": free.storage_bytes}
    assert quotas["storage_keys"] == {"used": 1, "limit": free.storage_keys}
    assert quotas["max_upstreams"] == {"used": 0, "limit": free.max_upstreams}
    assert quotas["max_tools"] == {"used": 6, "limit": free.max_tools, "offered": 6}
    health = await http.get("/health", params={"tenant": tenant.id}, headers=OPS)
    check = health.json()["checks"]["quotas"]
    assert check["status"] == "ok"
    assert set(check) >= KINDS
    assert check["storage_keys"] == quotas["storage_keys"]
    assert check["at_limit"] == []
    public = await http.get("/health", params={"tenant": tenant.id})
    assert public.status_code == 401  # the quotas of a tenant are for ops only


async def test_a_tenant_at_its_limits_is_reported_not_degraded(http: httpx.AsyncClient, admin: Admin) -> None:
    tenant = await admin.create_tenant(plan="enterprise")
    limits = {"storage_keys": 0, "max_upstreams": 0, "calls_per_window": 0, "reads_per_window": 0}
    assert (await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": limits})).status_code == 200
    check = (await http.get("/health", params={"tenant": tenant.id}, headers=OPS)).json()["checks"]["quotas"]
    assert check["status"] == "ok"
    assert set(check["at_limit"]) == set(limits)


async def test_an_unlimited_tenant_shows_null_limits(admin: Admin) -> None:
    tenant = await admin.create_tenant(plan="enterprise")
    quotas = await usage_quotas(admin, tenant.id)
    assert {kind: quotas[kind]["limit"] for kind in KINDS} == dict.fromkeys(KINDS)
    assert quotas["storage_keys"]["used"] == 0  # counted whatever the limit
    assert quotas["calls_per_window"]["used"] is None  # an unlimited window is not counted at all


async def test_a_plan_change_shows_and_applies_at_once(gateway_url: str, admin: Admin) -> None:
    tenant = await admin.create_tenant(plan="free")
    patched = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"plan": "pro"})
    assert patched.status_code == 200
    pro = DEFAULT_PLAN_LIMITS["pro"]
    quotas = await usage_quotas(admin, tenant.id)
    assert quotas["storage_bytes"]["limit"] == pro.storage_bytes
    assert quotas["max_tools"]["limit"] == pro.max_tools
    overridden = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": {"storage_keys": 0}})
    assert overridden.status_code == 200
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        refused = await client.call_tool("data_put", {"key": "k", "value": 1})
    assert refused.structured_content is not None
    assert refused.structured_content["error"] == "storage_quota_exceeded"
    assert (await usage_quotas(admin, tenant.id))["storage_keys"] == {"used": 0, "limit": 0}


@pytest.mark.parametrize(
    "limits",
    [
        {"storage_bytes": -1},
        {"storage_keys": "10"},
        {"max_upstreams": True},
        {"max_tools": 2.5},
        {"reads_per_window": -5},
        {"storage_bytes": 2**60},
        {"max_resources": 3},
    ],
    ids=str,
)
async def test_bad_limit_values_are_refused_and_change_nothing(admin: Admin, limits: dict[str, Any]) -> None:
    tenant = await admin.create_tenant(plan="free")
    good = {"storage_keys": 5}
    assert (await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": good})).status_code == 200
    refused = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": limits})
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_limits"
    assert (await admin.http.get(f"/api/tenants/{tenant.id}")).json()["limits"] == good
    assert (await usage_quotas(admin, tenant.id))["storage_keys"]["limit"] == 5


async def test_resource_reads_count_against_their_own_window_end_to_end(
    gateway_url: str, http: httpx.AsyncClient, admin: Admin
) -> None:
    from mcp.shared.exceptions import MCPError

    tenant = await admin.create_tenant(plan="enterprise")
    limits = {"reads_per_window": 2, "calls_per_window": 100}
    assert (await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": limits})).status_code == 200
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        await client.call_tool("data_put", {"key": "k", "value": 1})
        await client.read_resource("tenantry://data/k")
        await client.read_resource("tenantry://data/k")
        with pytest.raises(MCPError) as refused:
            await client.read_resource("tenantry://data/k")
        assert not (await client.call_tool("data_get", {"key": "k"})).is_error  # calls have their own window
        quotas = await usage_quotas(admin, tenant.id)
        raised = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": {**limits, "reads_per_window": 3}})
        assert raised.status_code == 200
        await client.read_resource("tenantry://data/k")  # the raised limit applies at once
    assert str(refused.value).startswith("read_quota_exceeded:")
    assert refused.value.error.data is not None
    assert refused.value.error.data["error"] == "read_quota_exceeded"
    assert (quotas["reads_per_window"]["used"], quotas["reads_per_window"]["limit"]) == (2, 2)
    assert (quotas["calls_per_window"]["used"], quotas["calls_per_window"]["limit"]) == (2, 100)
    health = (await http.get("/health", params={"tenant": tenant.id}, headers=OPS)).json()["checks"]["quotas"]
    assert health["reads_per_window"]["used"] == 3
    assert health["reads_per_window"]["limit"] == 3
    assert "reads_per_window" in health["at_limit"]
