"""Metering through the gateway, as tenants and admins see it: quotas, weights, rate and in-flight
limits, the usage ledger behind every result, and the usage API and tool."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError
from redis.asyncio import Redis
from sqlalchemy import text

from tenantry.client import connect
from tenantry.db.engine import Database
from tenantry.settings import Settings
from tests import conftest
from tests.conftest import ADMIN_KEY, Admin, TenantHandle, serve

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 10.0) -> None:
    """Wait (bounded) until `check()` holds; the ledger drain is asynchronous by design."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)  # a poll interval, not a wait for time to pass: the drain runs in the server


async def limited_tenant(admin: Admin, plan: str = "free", **limits: Any) -> TenantHandle:
    tenant = await admin.create_tenant(plan=plan)
    if limits:
        r = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": limits})
        assert r.status_code == 200, r.text
        assert r.json()["limits"] == limits
    return tenant


async def bridge(http: httpx.AsyncClient, tenant: TenantHandle, method: str, params: Any = None) -> httpx.Response:
    body: dict[str, Any] = {"method": method}
    if params is not None:
        body["params"] = params
    return await http.post(f"/api/tenant/{tenant.id}/tool", headers=tenant.headers, json=body)


async def ledger_rows(db: Database, tenant: TenantHandle) -> list[Any]:
    async with db.system() as conn:
        result = await conn.execute(
            text("SELECT event_id, tool, units, outcome, metered FROM usage_events WHERE tenant_id = :t"),
            {"t": uuid.UUID(tenant.id)},
        )
        return list(result.all())


async def ledger_count_is(db: Database, tenant: TenantHandle, n: int) -> None:
    async def check() -> bool:
        return len(await ledger_rows(db, tenant)) == n

    await eventually(check)


async def test_calls_over_quota_are_refused_with_a_retry_hint_and_not_executed(
    gateway_url: str, admin: Admin, db: Database
) -> None:
    tenant = await limited_tenant(admin, calls_per_window=3)
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        admitted = [await client.call_tool("data_put", {"key": f"k{i}", "value": i}) for i in range(3)]
        refused = await client.call_tool("data_put", {"key": "k3", "value": 3})
    assert not any(r.is_error for r in admitted)
    assert refused.is_error
    assert refused.content[0].text.startswith("quota_exceeded:")
    assert "'data_put'" in refused.content[0].text
    assert "'free'" in refused.content[0].text
    assert refused.structured_content["error"] == "quota_exceeded"
    assert refused.structured_content["retry_after_ms"] > 0
    assert refused.structured_content["plan"] == "free"
    assert "tenantry/event_id" not in (refused.meta or {})  # a refused call has no usage event
    async with db.system() as conn:
        keys = (
            (
                await conn.execute(
                    text("SELECT key FROM tenant_data WHERE tenant_id = :t ORDER BY key"), {"t": uuid.UUID(tenant.id)}
                )
            )
            .scalars()
            .all()
        )
    assert keys == ["k0", "k1", "k2"]  # the refused call never ran
    await ledger_count_is(db, tenant, 3)
    ids = {str(row.event_id) for row in await ledger_rows(db, tenant)}
    assert ids == {r.meta["tenantry/event_id"] for r in admitted if r.meta}


async def test_the_rest_bridge_answers_429_with_retry_after_over_quota(
    gateway_url: str, admin: Admin, http: httpx.AsyncClient
) -> None:
    tenant = await limited_tenant(admin, calls_per_window=1)
    assert (await bridge(http, tenant, "data_list", {})).status_code == 200
    r = await bridge(http, tenant, "data_list", {})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"] == "quota_exceeded"
    assert r.json()["retry_after_ms"] > 0


async def test_concurrent_calls_admit_exactly_the_limit(gateway_url: str, admin: Admin, db: Database) -> None:
    tenant = await limited_tenant(admin, calls_per_window=10, max_concurrent=None, requests_per_minute=None)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as http:
        answers = await asyncio.gather(*(bridge(http, tenant, "data_list", {}) for _ in range(30)))
    assert sorted(r.status_code for r in answers) == [200] * 10 + [429] * 20
    await ledger_count_is(db, tenant, 10)


async def test_a_noisy_tenant_does_not_change_another_tenants_admitted_calls(gateway_url: str, admin: Admin) -> None:
    noisy = await limited_tenant(admin, calls_per_window=5, max_concurrent=None, requests_per_minute=None)
    quiet = await limited_tenant(admin, calls_per_window=5)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as http:
        flood = await asyncio.gather(*(bridge(http, noisy, "data_list", {}) for _ in range(50)))
        calm = [await bridge(http, quiet, "data_list", {}) for _ in range(5)]
    assert sum(r.status_code == 200 for r in flood) == 5
    assert [r.status_code for r in calm] == [200] * 5


async def test_the_request_rate_counts_every_call_refused_ones_included_but_not_listings(
    gateway_url: str, admin: Admin
) -> None:
    tenant = await limited_tenant(admin, requests_per_minute=3)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as http:
        for _ in range(5):  # listing is served from memory and never refused by the rate
            assert (await bridge(http, tenant, "listTools")).status_code == 200
        assert (await bridge(http, tenant, "no_such_tool", {})).status_code == 404  # request 1
        assert (await bridge(http, tenant, "data_get", {"key": 5})).status_code == 400  # request 2
        assert (await bridge(http, tenant, "data_list", {})).status_code == 200  # request 3
        r = await bridge(http, tenant, "data_list", {})
        assert r.status_code == 429
        assert r.json()["error"] == "rate_limited"
        assert "Retry-After" in r.headers
        # Refused at once, and still refused: the flood costs the gateway no Redis round trip now.
        assert (await bridge(http, tenant, "no_such_tool", {})).status_code == 429
        assert (await bridge(http, tenant, "listTools")).status_code == 200


async def test_raising_a_rate_limited_tenants_limits_takes_effect_at_once(gateway_url: str, admin: Admin) -> None:
    tenant = await limited_tenant(admin, calls_per_window=1, requests_per_minute=2)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as http:
        assert (await bridge(http, tenant, "data_list", {})).status_code == 200
        for _ in range(2):  # the 2nd and 3rd requests of the minute: Redis says what holds them longest
            r = await bridge(http, tenant, "data_list", {})
            assert (r.status_code, r.json()["error"]) == (429, "quota_exceeded")
        for _ in range(5):  # over its rate: refused from memory from then on
            r = await bridge(http, tenant, "data_list", {})
            assert (r.status_code, r.json()["error"]) == (429, "rate_limited")
        raised = {"calls_per_window": 100, "requests_per_minute": 100}
        assert (await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": raised})).status_code == 200
        assert (await bridge(http, tenant, "data_list", {})).status_code == 200


async def test_an_sdk_agent_calling_at_its_rate_never_sees_a_billed_call_fail(
    gateway_url: str, admin: Admin, db: Database
) -> None:
    # The SDK lists tools after calls (to refresh output schemas): counted, that listing would be refused
    # at half the rate, and a call that ran and was billed would reach the agent as an error.
    tenant = await limited_tenant(admin, requests_per_minute=4)
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        results = [await client.call_tool("data_put", {"key": f"k{n}", "value": n}) for n in range(4)]
        assert not any(r.is_error for r in results)
        with pytest.raises(MCPError) as refused:
            await client.call_tool("data_put", {"key": "k4", "value": 4})
    assert refused.value.error.message.startswith("rate_limited:")
    await ledger_count_is(db, tenant, 4)
    assert sorted(row.outcome for row in await ledger_rows(db, tenant)) == ["ok"] * 4


async def test_an_enterprise_tenant_is_not_metered_in_redis_but_is_in_the_ledger(
    gateway_url: str, admin: Admin, db: Database, settings: Settings
) -> None:
    tenant = await admin.create_tenant(plan="enterprise")
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        for i in range(5):
            assert not (await client.call_tool("data_put", {"key": f"k{i}", "value": i})).is_error
    redis = Redis.from_url(settings.redis_url)
    try:
        assert await redis.keys(f"{settings.redis_key_prefix}:{{{tenant.id}}}*") == []
    finally:
        await redis.aclose()
    await ledger_count_is(db, tenant, 5)


async def test_bad_input_consumes_no_quota_and_leaves_no_usage_event(
    gateway_url: str, admin: Admin, db: Database
) -> None:
    tenant = await limited_tenant(admin, calls_per_window=1)
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        bad = await client.call_tool("data_put", {"key": 5, "value": 1})
        good = await client.call_tool("data_put", {"key": "ok", "value": 1})
    assert bad.is_error
    assert bad.structured_content["error"] == "invalid_arguments"
    assert not good.is_error
    await ledger_count_is(db, tenant, 1)


async def test_invalid_limit_overrides_are_refused_and_change_nothing(admin: Admin) -> None:
    tenant = await admin.create_tenant()
    for limits in ({"calls_per_window": -1}, {"calls": 5}, {"window_seconds": 0}, {"fail_open": "yes"}):
        r = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": limits})
        assert r.status_code == 400, limits
        assert r.json()["error"] == "invalid_limits"
    assert (await admin.http.get(f"/api/tenants/{tenant.id}")).json()["limits"] == {}


async def test_usage_is_reported_per_tool_to_the_admin_and_to_the_tenant(
    gateway_url: str, admin: Admin, db: Database, http: httpx.AsyncClient
) -> None:
    tenant = await limited_tenant(admin, calls_per_window=50)
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        await client.call_tool("data_put", {"key": "a", "value": 1})
        await client.call_tool("data_put", {"key": "b", "value": 2})
        await client.call_tool("data_get", {"key": "missing"})  # a tool error: counted, not billable
    await ledger_count_is(db, tenant, 3)
    r = await admin.http.get(f"/api/tenants/{tenant.id}/usage")
    assert r.status_code == 200, r.text
    usage = r.json()
    assert usage["tools"]["data_put"] == {
        "calls": 2,
        "ok_calls": 2,
        "units": 2,
        "billable_units": 2,
        "unmetered_calls": 0,
    }
    assert usage["tools"]["data_get"]["ok_calls"] == 0
    assert usage["totals"]["billable_units"] == 2
    assert usage["quota"]["limit"] == 50
    assert usage["quota"]["used"] == 3
    assert usage["quota"]["remaining"] == 47
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        own = await client.call_tool("usage_summary", {})
    assert not own.is_error
    assert own.structured_content["tools"] == usage["tools"]
    assert own.structured_content["quota"]["remaining"] == 46  # this call counted too
    bad = await http.get(
        f"/api/tenants/{tenant.id}/usage",
        headers=ADMIN_HEADERS,
        params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
    )
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_range"
    assert (await http.get(f"/api/tenants/{tenant.id}/usage")).status_code == 401


@pytest.fixture(scope="module")
def weighted_gateway(settings: Settings) -> Iterator[str]:
    with serve(conftest.test_settings(tool_costs={"data_list": 4})) as url:
        yield url


async def test_tool_cost_weights_count_against_the_quota(weighted_gateway: str, db: Database) -> None:
    async with httpx.AsyncClient(base_url=weighted_gateway, headers=ADMIN_HEADERS, timeout=30) as http:
        tenant = await limited_tenant(Admin(http), calls_per_window=10)
        first = await bridge(http, tenant, "data_list", {})
        second = await bridge(http, tenant, "data_list", {})
        third = await bridge(http, tenant, "data_list", {})
        cheap = [await bridge(http, tenant, "data_get", {"key": "x"}) for _ in range(3)]
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert third.json()["error"] == "quota_exceeded"
    # 8 of 10 units used: two 1-unit calls still fit, the third does not (data_get of a missing
    # key is a tool error, which the bridge answers 404, but it was admitted and counted).
    assert [r.status_code for r in cheap] == [404, 404, 429]
    await ledger_count_is(db, tenant, 4)
    assert sorted(row.units for row in await ledger_rows(db, tenant)) == [1, 1, 4, 4]


async def test_the_in_flight_cap_refuses_a_call_while_the_tenant_has_its_limit_in_flight(
    gateway_url: str, admin: Admin, settings: Settings, http: httpx.AsyncClient
) -> None:
    tenant = await limited_tenant(admin, max_concurrent=1)
    # Another replica's call of this tenant is in flight (its slot runs to a far deadline).
    redis = Redis.from_url(settings.redis_url)
    key = f"{settings.redis_key_prefix}:{{{tenant.id}}}:inflight"
    try:
        await redis.zadd(key, {"elsewhere": 2**50})
        await redis.pexpire(key, 60_000)
        rest = await bridge(http, tenant, "data_list", {})
        async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("data_list", {})
        await redis.zrem(key, "elsewhere")
        freed = await bridge(http, tenant, "data_list", {})
    finally:
        await redis.delete(key)
        await redis.aclose()
    assert rest.status_code == 429
    assert rest.json()["error"] == "concurrency_limited"
    assert refused.value.error.code == -32029
    assert refused.value.error.message.startswith("concurrency_limited:")
    assert freed.status_code == 200
