"""The built-in tools, through the gateway, as an MCP client sees them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tenantry.client import connect
from tests.conftest import Admin, TenantHandle, serve

BUILTINS = {"data_put", "data_get", "data_list", "data_delete", "health_check", "usage_summary"}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_tools_list_offers_the_builtins_with_descriptions_and_schemas(
    gateway_url: str, tenant_a: TenantHandle
) -> None:
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == BUILTINS
    for tool in tools.values():
        assert tool.description
        assert len(tool.description) > 40
        assert tool.input_schema["type"] == "object"
        assert tool.input_schema.get("additionalProperties") is False
    assert tools["data_put"].input_schema["required"] == ["key", "value"]
    assert tools["data_get"].annotations is not None
    assert tools["data_get"].annotations.read_only_hint
    assert tools["data_delete"].annotations is not None
    assert tools["data_delete"].annotations.destructive_hint


async def test_data_store_round_trip(gateway_url: str, tenant_a: TenantHandle) -> None:
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        first = await client.call_tool("data_put", {"key": "cfg/a", "value": {"n": [1, 2, 3], "ok": True}})
        again = await client.call_tool("data_put", {"key": "cfg/a", "value": {"n": [4]}})
        await client.call_tool("data_put", {"key": "cfg/b", "value": "text"})
        await client.call_tool("data_put", {"key": "other", "value": None})
        got = await client.call_tool("data_get", {"key": "cfg/a"})
        listed = await client.call_tool("data_list", {"prefix": "cfg/"})
        deleted = await client.call_tool("data_delete", {"key": "cfg/b"})
        after = await client.call_tool("data_list", {})
        gone = await client.call_tool("data_get", {"key": "cfg/b"})
    assert first.structured_content["created"] is True
    assert again.structured_content["created"] is False
    assert got.structured_content["value"] == {"n": [4]}
    assert [k["key"] for k in listed.structured_content["keys"]] == ["cfg/a", "cfg/b"]
    assert deleted.structured_content == {"key": "cfg/b", "deleted": True}
    assert [k["key"] for k in after.structured_content["keys"]] == ["cfg/a", "other"]
    assert gone.is_error
    assert gone.structured_content["error"] == "key_not_found"
    assert gone.content[0].text.startswith("key_not_found:")


async def test_data_list_pages_in_key_order(gateway_url: str, tenant_a: TenantHandle) -> None:
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        for key in ["b", "a", "c", "B", "a-1"]:
            await client.call_tool("data_put", {"key": key, "value": 0})
        seen: list[str] = []
        after = None
        while True:
            page = await client.call_tool("data_list", {"limit": 2, **({"after": after} if after else {})})
            seen += [k["key"] for k in page.structured_content["keys"]]
            after = page.structured_content["next_after"]
            if after is None:
                break
    assert seen == sorted(["b", "a", "c", "B", "a-1"])


async def test_health_check_reports_the_tenant_the_database_sees(gateway_url: str, tenant_a: TenantHandle) -> None:
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        result = await client.call_tool("health_check", {})
    assert not result.is_error
    assert result.structured_content["tenant_id"] == tenant_a.id
    assert result.structured_content["database_role"] == "tenantry_app"


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("data_put", {"key": 5, "value": 1}),
        ("data_put", {"key": "k"}),
        ("data_put", {"key": "", "value": 1}),
        ("data_put", {"key": "k", "value": 1, "extra": True}),
        ("data_put", {"key": "x" * 300, "value": 1}),
        ("data_list", {"limit": "ten"}),
        ("data_list", {"limit": 0}),
    ],
)
async def test_wrong_arguments_get_a_tool_error_and_write_nothing(
    gateway_url: str, tenant_a: TenantHandle, tool: str, args: dict[str, Any]
) -> None:
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        result = await client.call_tool(tool, args)
        listed = await client.call_tool("data_list", {})
    assert result.is_error
    assert result.structured_content["error"] == "invalid_arguments"
    assert listed.structured_content["keys"] == []


async def test_an_oversized_value_is_refused_and_nothing_is_written(gateway_url: str, tenant_a: TenantHandle) -> None:
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        result = await client.call_tool("data_put", {"key": "big", "value": "x" * 70_000})
        listed = await client.call_tool("data_list", {})
    assert result.structured_content["error"] == "value_too_large"
    assert listed.structured_content["keys"] == []


async def test_an_unknown_tool_is_a_json_rpc_error(gateway_url: str, tenant_a: TenantHandle) -> None:
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("no_such_tool", {})
    assert raised.value.code == -32602
    assert "unknown tool" in raised.value.error.message


async def test_malformed_json_rpc_gets_a_4xx(http: httpx.AsyncClient, tenant_a: TenantHandle) -> None:
    headers = {**tenant_a.headers, **ACCEPT}
    not_json = await http.post("/mcp", headers=headers, content=b"{not json")
    assert 400 <= not_json.status_code < 500
    not_rpc = await http.post("/mcp", headers=headers, json={"hello": "world"})
    assert 400 <= not_rpc.status_code < 500


async def test_an_oversized_body_is_refused_before_it_is_read(http: httpx.AsyncClient, tenant_a: TenantHandle) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "data_put", "arguments": {"key": "k", "value": "x" * 2_000_000}},
    }
    r = await http.post("/mcp", headers={**tenant_a.headers, **ACCEPT}, json=body)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    bridge = await http.post(f"/api/tenant/{tenant_a.id}/tool", headers=tenant_a.headers, json={"method": "data_list"})
    assert bridge.json()["structuredContent"]["keys"] == []


async def test_a_full_data_store_refuses_new_keys_but_updates_old_ones(settings: Any) -> None:
    with serve(settings.model_copy(update={"data_max_keys_per_tenant": 2})) as url:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": "Bearer test-admin-key-0123456789abcdef"}
        ) as c:
            tenant = await Admin(c).create_tenant()
        async with connect(f"{url}/mcp", tenant.headers) as client:
            await client.call_tool("data_put", {"key": "a", "value": 1})
            await client.call_tool("data_put", {"key": "b", "value": 1})
            full = await client.call_tool("data_put", {"key": "c", "value": 1})
            update = await client.call_tool("data_put", {"key": "a", "value": 2})
            listed = await client.call_tool("data_list", {})
    assert full.structured_content["error"] == "store_full"
    assert not update.is_error
    assert [k["key"] for k in listed.structured_content["keys"]] == ["a", "b"]


async def test_the_rest_bridge_lists_and_calls_tools(http: httpx.AsyncClient, tenant_a: TenantHandle) -> None:
    url = f"/api/tenant/{tenant_a.id}/tool"
    listed = await http.post(url, headers=tenant_a.headers, json={"method": "listTools"})
    assert {t["name"] for t in listed.json()["tools"]} == BUILTINS
    assert "inputSchema" in listed.json()["tools"][0]
    by_mcp_name = await http.post(url, headers=tenant_a.headers, json={"method": "tools/list"})
    assert by_mcp_name.json() == listed.json()
    put = await http.post(
        url, headers=tenant_a.headers, json={"method": "data_put", "params": {"key": "k", "value": 2}}
    )
    assert put.status_code == 200
    assert put.json()["structuredContent"]["created"] is True
    bad = await http.post(url, headers=tenant_a.headers, json={"method": "data_put", "params": {"key": 1}})
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_arguments"
    unknown = await http.post(url, headers=tenant_a.headers, json={"method": "nope"})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_tool"
    garbage = await http.post(url, headers={**tenant_a.headers, "Content-Type": "application/json"}, content=b"[")
    assert garbage.status_code == 400
    assert garbage.json()["error"] == "invalid_json"
