"""`max_tools`: the built-ins, then upstream tools in the view's order, up to the plan's cap.

A call of an upstream tool past the cap is refused `tool_quota_exceeded` (not `unknown_tool`), never
reaches the upstream and is not metered. The fixture upstream offers 7 tools to the `alpha` token, in
the order echo, rich, fail, crash, hang, interactive, shift; the gateway has 6 built-ins.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tenantry.client import connect
from tests.conftest import OPS, Admin, TenantHandle
from tests.upstream_servers import FixtureUpstream, serve_upstream

BUILTINS = ["data_put", "data_get", "data_list", "data_delete", "health_check", "usage_summary"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FixtureUpstream, str]]:
    fixture = FixtureUpstream()
    with serve_upstream(fixture) as (url, _server):
        yield fixture, url


async def tenant_with(admin: Admin, url: str, **limits: Any) -> TenantHandle:
    tenant = await admin.create_tenant(plan="enterprise")
    r = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": limits})
    assert r.status_code == 200, r.text
    body = {"name": "fx", "url": url, "headers": {"Authorization": "Bearer alpha"}}
    assert (await admin.http.post(f"/api/tenants/{tenant.id}/upstreams", json=body)).status_code == 201
    return tenant


async def calls_used(admin: Admin, tenant: TenantHandle) -> int:
    quotas = (await admin.http.get(f"/api/tenants/{tenant.id}/usage")).json()["quotas"]
    used: int = quotas["calls_per_window"]["used"]
    return used


async def test_listing_shows_the_builtins_then_upstream_tools_up_to_the_cap(
    gateway_url: str, admin: Admin, upstream: tuple[FixtureUpstream, str]
) -> None:
    tenant = await tenant_with(admin, upstream[1], max_tools=8)
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        names = [t.name for t in (await client.list_tools()).tools]
    assert names == [*BUILTINS, "fx__echo", "fx__rich"]


async def test_a_call_past_the_cap_is_refused_clearly_and_not_metered(
    gateway_url: str, http: httpx.AsyncClient, admin: Admin, upstream: tuple[FixtureUpstream, str]
) -> None:
    fixture, url = upstream
    tenant = await tenant_with(admin, url, max_tools=8, calls_per_window=100)
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        assert not (await client.call_tool("fx__echo", {"text": "in"})).is_error
        reached = fixture.calls
        refused = await client.call_tool("fx__fail", {})
    assert refused.is_error
    assert refused.structured_content is not None
    assert refused.structured_content["error"] == "tool_quota_exceeded"
    assert (refused.structured_content["quota"], refused.structured_content["limit"]) == ("max_tools", 8)
    assert fixture.calls == reached  # the upstream never saw it
    assert await calls_used(admin, tenant) == 1  # only the admitted call counted
    bridge = await http.post(
        f"/api/tenant/{tenant.id}/tool", json={"method": "fx__shift", "params": {}}, headers=tenant.headers
    )
    assert bridge.status_code == 403
    assert bridge.json()["error"] == "tool_quota_exceeded"
    unknown = await http.post(
        f"/api/tenant/{tenant.id}/tool", json={"method": "fx__nothing", "params": {}}, headers=tenant.headers
    )
    assert unknown.json()["error"] == "unknown_tool"  # a tool that does not exist is still unknown


async def test_a_cap_below_the_builtins_keeps_the_builtins_and_no_upstream_tool(
    gateway_url: str, admin: Admin, upstream: tuple[FixtureUpstream, str]
) -> None:
    tenant = await tenant_with(admin, upstream[1], max_tools=2)
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        put = await client.call_tool("data_put", {"key": "k", "value": 1})
        echo = await client.call_tool("fx__echo", {"text": "x"})
    assert names == BUILTINS
    assert not put.is_error
    assert echo.structured_content is not None
    assert echo.structured_content["error"] == "tool_quota_exceeded"


async def test_a_raised_cap_applies_at_once(
    gateway_url: str, admin: Admin, upstream: tuple[FixtureUpstream, str]
) -> None:
    tenant = await tenant_with(admin, upstream[1], max_tools=7)
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        assert (await client.call_tool("fx__rich", {})).is_error
        patched = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": {"max_tools": 9}})
        assert patched.status_code == 200
        assert not (await client.call_tool("fx__rich", {})).is_error
        names = [t.name for t in (await client.list_tools()).tools]
        assert names[len(BUILTINS) :] == ["fx__echo", "fx__rich", "fx__fail"]
        cleared = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": {}})
        assert cleared.status_code == 200  # enterprise: no cap
        assert len((await client.list_tools()).tools) == len(BUILTINS) + 7


async def test_the_tool_count_shows_in_usage_health_and_usage_summary(
    gateway_url: str, http: httpx.AsyncClient, admin: Admin, upstream: tuple[FixtureUpstream, str]
) -> None:
    tenant = await tenant_with(admin, upstream[1], max_tools=10)
    expected = {"used": 10, "limit": 10, "offered": 13}
    usage = (await admin.http.get(f"/api/tenants/{tenant.id}/usage")).json()
    assert usage["quotas"]["max_tools"] == expected
    health = await http.get("/health", params={"tenant": tenant.id}, headers=OPS)
    quotas = health.json()["checks"]["quotas"]
    assert quotas["max_tools"] == expected
    assert quotas["status"] == "ok"  # at its tool limit: the tenant's state, not a fault
    assert "max_tools" in quotas["at_limit"]
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        own = await client.call_tool("usage_summary", {})
    assert own.structured_content is not None
    assert own.structured_content["quotas"]["max_tools"] == expected
