"""The stateless JSON fast path answers tools/call exactly as the SDK's transport would.

Each request goes to the default gateway (fast path on) and to one with it off (the SDK's
own stateless JSON transport); the two answers must match: status, and the JSON body once
the per-call event id is set aside. Requests the fast path must leave to the SDK (other
methods, the modern protocol, bad bodies) are checked to come back the same way too, and
the fast path's counter shows which ones it answered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tenantry.gateway.context import LIMIT_EXCEEDED
from tenantry.settings import Settings
from tests.conftest import OPS, Admin, TenantHandle, serve
from tests.federation.test_upstreams import add_upstream

LEGACY = "2025-11-25"
ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def sdk_gateway(settings: Settings) -> Iterator[str]:
    with serve(settings.model_copy(update={"mcp_fast_path": False})) as url:
        yield url


def _strip(body: Any) -> Any:
    """The answer without what differs per call (the usage event id)."""
    meta = body.get("result", {}).get("_meta") if isinstance(body, dict) else None
    if isinstance(meta, dict):
        meta.pop("tenantry/event_id", None)
        if not meta:
            del body["result"]["_meta"]
    return body


async def post(url: str, headers: dict[str, str], body: Any, **extra: str) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = {**headers, "Content-Type": "application/json", "Accept": ACCEPT, "MCP-Protocol-Version": LEGACY, **extra}
    head = {k: v for k, v in head.items() if v}
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{url}/mcp", content=raw, headers=head)
    try:
        parsed = r.json()
    except ValueError:
        parsed = r.text
    return r.status_code, _strip(parsed)


def fast_count(text: str) -> float:
    found = re.search(r"^tenantry_mcp_fast_path_calls_total (\S+)$", text, re.M)
    assert found is not None
    return float(found.group(1))


def call(name: str, arguments: Any, request_id: Any = 1) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


async def test_answers_match_the_sdk_transport(
    gateway_url: str, sdk_gateway: str, admin: Admin, tenant_a: TenantHandle, fixture_upstream: Any
) -> None:
    _, url = fixture_upstream
    await add_upstream(admin, tenant_a, url, "alpha")
    h = tenant_a.headers
    put = call("data_put", {"key": "k", "value": {"n": 1}})
    assert (await post(gateway_url, h, put))[0] == 200
    answered = [
        (call("data_get", {"key": "k"}, "string-id"), {}),
        (call("data_get", {"key": "missing"}), {}),  # a tool error
        (call("data_get", {"key": 5}), {}),  # invalid arguments
        (call("no_such_tool", {}), {}),  # JSON-RPC error
        (call("fx__rich", {}), {}),  # forwarded: every content type and structuredContent
        (call("fx__fail", {}), {}),
        (call("data_get", {"key": "k"}), {"MCP-Protocol-Version": "2024-11-05"}),  # the older result surface
        (call("data_get", {"key": "k"}), {"MCP-Protocol-Version": ""}),  # no header: the default version
    ]
    deferred = [
        ({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, {}),
        ({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"arguments": {}}}, {}),  # no name
        ({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "data_get"}}, {}),  # a notification
        ([put, put], {}),  # a batch
        (b'{"jsonrpc": "2.0", "id": 4, "method": "tools/call", ', {}),  # not JSON
        (put, {"Accept": "text/html"}),
        (put, {"Content-Type": "text/plain"}),
        (put, {"MCP-Protocol-Version": "1999-01-01"}),
    ]  # each refused before any tool runs, so sending them twice changes nothing
    before = fast_count((await admin.http.get("/metrics")).text)
    for body, extra in answered + deferred:
        fast = await post(gateway_url, h, body, **extra)
        sdk = await post(sdk_gateway, h, body, **extra)
        assert fast == sdk, (body, extra)
    after = fast_count((await admin.http.get("/metrics")).text)
    assert after - before == len(answered)
    # Sanity: the answers are what a client expects, not merely equal.
    status, got = await post(gateway_url, h, call("data_get", {"key": "k"}, "string-id"))
    assert status == 200
    assert got["id"] == "string-id"
    assert got["result"]["structuredContent"]["value"] == {"n": 1}
    status, unknown = await post(gateway_url, h, call("no_such_tool", {}))
    assert unknown["error"]["code"] == -32602


async def test_the_fast_path_keeps_authentication_and_event_ids(gateway_url: str, tenant_a: TenantHandle) -> None:
    status, _ = await post(gateway_url, {"Tenant-ID": tenant_a.id, "Authorization": "Bearer nope"}, call("x", {}))
    assert status == 401
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(
            f"{gateway_url}/mcp",
            json=call("data_put", {"key": "e", "value": 1}),
            headers={**tenant_a.headers, "Accept": ACCEPT, "MCP-Protocol-Version": LEGACY},
        )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert "tenantry/event_id" in r.json()["result"]["_meta"]


async def test_host_and_origin_checks_hold_on_the_fast_path(
    settings: Settings, admin: Admin, tenant_a: TenantHandle
) -> None:
    guarded = settings.model_copy(update={"mcp_allowed_hosts": ["127.0.0.1:*"], "mcp_allowed_origins": []})
    with serve(guarded) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            before = fast_count((await client.get("/metrics", headers=OPS)).text)
            ok = await post(url, tenant_a.headers, call("data_get", {"key": "missing"}))
            rebound = await post(url, tenant_a.headers, call("data_get", {"key": "missing"}), Host="evil.example")
            foreign = await post(
                url, tenant_a.headers, call("data_get", {"key": "missing"}), Origin="http://evil.example"
            )
            after = fast_count((await client.get("/metrics", headers=OPS)).text)
    assert ok[0] == 200
    assert rebound[0] in (400, 403, 421), rebound
    assert foreign[0] in (400, 403), foreign
    assert after - before == 1  # only the request that passed the checks was answered here


async def test_a_tenant_over_its_rate_is_refused_early_as_the_pipeline_would(
    gateway_url: str, sdk_gateway: str, admin: Admin, http: httpx.AsyncClient
) -> None:
    tenant = await admin.create_tenant(plan="free")
    limits = {"requests_per_minute": 2}
    assert (await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": limits})).status_code == 200
    for _ in range(3):  # two within the rate, the third over it (and the gateway now knows)
        await post(gateway_url, tenant.headers, call("data_list", {}))
    before = fast_count((await http.get("/metrics", headers=OPS)).text)
    early = [await post(gateway_url, tenant.headers, call("data_list", {}, request_id=n)) for n in (7, "x")]
    slow = await post(sdk_gateway, tenant.headers, call("data_list", {}, request_id=7))
    assert [status for status, _ in early] == [200, 200]
    assert [body["id"] for _, body in early] == [7, "x"]
    fast_error, sdk_error = early[0][1]["error"], slow[1]["error"]
    assert fast_error["code"] == sdk_error["code"] == LIMIT_EXCEEDED
    assert fast_error["message"].startswith("rate_limited: plan 'free' allows 2 requests per minute")
    assert sdk_error["message"].startswith("rate_limited: plan 'free' allows 2 requests per minute")
    assert fast_error["data"]["tool"] == sdk_error["data"]["tool"] == "data_list"
    # Bad arguments or an unknown tool change nothing: the rate refuses them all first.
    _, unknown = await post(gateway_url, tenant.headers, call("no_such_tool", {"x": 1}))
    assert unknown["error"]["data"]["error"] == "rate_limited"
    metrics = (await http.get("/metrics", headers=OPS)).text
    assert fast_count(metrics) == before + 3
    assert 'tenantry_tool_calls_total{outcome="rate_limited",tool="data_list"}' in metrics
