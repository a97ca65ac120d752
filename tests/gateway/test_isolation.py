"""Tenant A cannot read, list, overwrite or delete tenant B's data by any path."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tenantry.client import connect
from tests.conftest import TenantHandle


async def call(url: str, headers: dict[str, str], transport: str, tool: str, args: dict[str, Any]) -> Any:
    async with connect(url, headers, transport) as client:
        return await client.call_tool(tool, args)


def endpoint(gateway_url: str, transport: str) -> str:
    return f"{gateway_url}/{'sse' if transport == 'sse' else 'mcp'}"


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_tenants_see_only_their_own_data_over_mcp(
    gateway_url: str, tenant_a: TenantHandle, tenant_b: TenantHandle, transport: str
) -> None:
    url = endpoint(gateway_url, transport)
    await call(url, tenant_b.headers, transport, "data_put", {"key": "secret", "value": {"owner": "b"}})

    get = await call(url, tenant_a.headers, transport, "data_get", {"key": "secret"})
    assert get.is_error
    assert get.structured_content["error"] == "key_not_found"

    listed = await call(url, tenant_a.headers, transport, "data_list", {})
    assert listed.structured_content["keys"] == []

    deleted = await call(url, tenant_a.headers, transport, "data_delete", {"key": "secret"})
    assert deleted.is_error

    # A's put under the same key makes A's own row; B's value is untouched.
    put = await call(url, tenant_a.headers, transport, "data_put", {"key": "secret", "value": "a's"})
    assert put.structured_content["created"] is True
    theirs = await call(url, tenant_b.headers, transport, "data_get", {"key": "secret"})
    assert theirs.structured_content["value"] == {"owner": "b"}
    mine = await call(url, tenant_a.headers, transport, "data_get", {"key": "secret"})
    assert mine.structured_content["value"] == "a's"


async def test_tenants_see_only_their_own_data_over_the_rest_bridge(
    http: httpx.AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    def bridge(t: TenantHandle) -> str:
        return f"/api/tenant/{t.id}/tool"

    put = await http.post(
        bridge(tenant_b), headers=tenant_b.headers, json={"method": "data_put", "params": {"key": "k", "value": 1}}
    )
    assert put.status_code == 200, put.text
    got = await http.post(
        bridge(tenant_a), headers=tenant_a.headers, json={"method": "data_get", "params": {"key": "k"}}
    )
    assert got.status_code == 404
    assert got.json()["error"] == "key_not_found"
    listed = await http.post(bridge(tenant_a), headers=tenant_a.headers, json={"method": "data_list"})
    assert listed.json()["structuredContent"]["keys"] == []


async def test_another_tenants_id_in_the_header_with_my_key_is_refused(
    gateway_url: str, http: httpx.AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    headers = {"Tenant-ID": tenant_b.id, "Authorization": f"Bearer {tenant_a.key}"}
    r = await http.post(
        "/mcp",
        headers={**headers, "Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    assert r.status_code == 403
    assert r.json()["error"] == "tenant_mismatch"
    sse = await http.get("/sse", headers=headers)
    assert sse.status_code == 403
    bridge = await http.post(f"/api/tenant/{tenant_b.id}/tool", headers=headers, json={"method": "listTools"})
    assert bridge.status_code == 403


async def test_another_tenants_id_in_the_bridge_url_with_my_token_is_refused(
    http: httpx.AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    token = (await http.post("/api/auth/tenant-token", headers={"x-api-key": tenant_a.key})).json()["access_token"]
    r = await http.post(
        f"/api/tenant/{tenant_b.id}/tool",
        headers={"Authorization": f"Bearer {token}"},
        json={"method": "data_list"},
    )
    assert r.status_code == 403
    assert r.json()["error"] == "tenant_mismatch"


async def test_a_guessed_key_gets_nothing(http: httpx.AsyncClient, tenant_b: TenantHandle) -> None:
    guessed = tenant_b.key[:-4] + "AAAA"
    r = await http.post(
        f"/api/tenant/{tenant_b.id}/tool",
        headers={"Authorization": f"Bearer {guessed}"},
        json={"method": "data_list"},
    )
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_a_stateful_session_opened_by_one_tenant_is_refused_to_another(
    settings: Any, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    from tests.conftest import serve

    with serve(settings.model_copy(update={"mcp_stateful": True, "mcp_json_response": True})) as url:
        accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            init = await client.post(
                "/mcp",
                headers={**tenant_a.headers, **accept},
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {},
                        "clientInfo": {"name": "test", "version": "0"},
                    },
                },
            )
            assert init.status_code == 200, init.text
            session = {"Mcp-Session-Id": init.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-06-18"}
            await client.post(
                "/mcp",
                headers={**tenant_a.headers, **accept, **session},
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            )
            list_tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            mine = await client.post("/mcp", headers={**tenant_a.headers, **accept, **session}, json=list_tools)
            assert mine.status_code == 200, mine.text
            hijack = await client.post("/mcp", headers={**tenant_b.headers, **accept, **session}, json=list_tools)
            assert hijack.status_code == 404  # the SDK answers as if the session did not exist
            assert "result" not in hijack.json()
