"""Ops: /health, /health?tenant= and /metrics."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tenantry.client import connect
from tests.conftest import TenantHandle, serve


async def test_health_is_ok_and_names_each_check(http: httpx.AsyncClient) -> None:
    r = await http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "redis", "app_role", "ledger", "upstream_changes"}
    assert body["checks"]["app_role"]["rows_visible_without_tenant"] == 0
    assert "checked_out" in body["checks"]["database"]["pool"]


async def test_tenant_health_runs_the_rls_canary(
    gateway_url: str, http: httpx.AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        await client.call_tool("data_put", {"key": "one", "value": 1})
        await client.call_tool("data_put", {"key": "two", "value": 2})
    async with connect(f"{gateway_url}/mcp", tenant_b.headers) as client:
        await client.call_tool("data_put", {"key": "b", "value": 1})
    r = await http.get("/health", params={"tenant": tenant_a.id})
    assert r.status_code == 200
    canary = r.json()["checks"]["rls_canary"]
    assert canary == {"status": "ok", "own_rows": 2, "expected_rows": 2, "foreign_rows_visible": 0}
    assert r.json()["tenant"]["id"] == tenant_a.id
    quota = r.json()["checks"]["quota"]
    assert (quota["limit"], quota["used"], quota["remaining"]) == (100, 2, 98)  # the free plan, two calls


async def test_tenant_health_rejects_bad_and_unknown_ids(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health", params={"tenant": "nope"})).status_code == 400
    missing = await http.get("/health", params={"tenant": str(uuid.uuid4())})
    assert missing.status_code == 404
    assert missing.json()["error"] == "tenant_not_found"


async def test_health_is_503_and_names_redis_when_redis_is_unreachable(settings: Any) -> None:
    from tests.conftest import free_port

    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with serve(dead) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            r = await client.get("/health")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["status"] == "fail"
    assert body["checks"]["database"]["status"] == "ok"


async def test_metrics_count_tool_calls_per_tenant_and_outcome(
    gateway_url: str, http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        await client.call_tool("data_get", {"key": "missing"})
    text = (await http.get("/metrics")).text
    line = f'tenantry_tool_calls_total{{outcome="key_not_found",tenant="{tenant_a.id}",tool="data_get"}} 1.0'
    assert line in text
    assert "tenantry_tool_call_seconds_bucket" in text


async def test_health_counts_ledger_entries_set_aside_without_failing(settings: Any) -> None:
    from redis.asyncio import Redis

    from tenantry.metering.drain import dead_letter_key
    from tenantry.metering.ledger import stream_key

    prefix = f"health-{uuid.uuid4().hex[:8]}"
    dead = dead_letter_key(stream_key(prefix))
    redis = Redis.from_url(settings.redis_url)
    try:
        await redis.xadd(dead, {"junk": "x", "reason": "not a usage event"})
        with serve(settings.model_copy(update={"redis_key_prefix": prefix})) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                r = await client.get("/health")
    finally:
        await redis.delete(dead)
        await redis.aclose()
    assert r.status_code == 200  # no replica can fix such an entry by retrying: ops inspects it
    assert r.json()["checks"]["ledger"]["dead_letters"] == 1
