"""The gateway driven by the official TypeScript SDK client (`@modelcontextprotocol/sdk`), a real peer
that is not ours, over both transports, with the two tenant headers as custom request headers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TenantHandle

CLIENT = Path(__file__).resolve().parent.parent / "ts_client" / "client.mjs"


async def ts_call(
    url: str, transport: str, headers: dict[str, str], tool: str, arguments: dict[str, Any]
) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (CLIENT.parent / "node_modules").is_dir():
        pytest.fail("Node.js and tests/ts_client/node_modules are needed: run ./scripts/test.sh, which installs them")
    proc = await asyncio.create_subprocess_exec(
        node,
        str(CLIENT),
        url,
        transport,
        tool,
        json.dumps(arguments),
        env={**os.environ, "MCP_HEADERS": json.dumps(headers), "MCP_TIMEOUT_MS": "20000"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=40)
    lines = stdout.decode().strip().splitlines()
    assert lines, stderr.decode()
    out: dict[str, Any] = json.loads(lines[-1])
    out["exit"] = proc.returncode
    return out


@pytest.mark.parametrize(("transport", "path"), [("http", "/mcp"), ("sse", "/sse")])
async def test_the_typescript_sdk_client_lists_and_calls_tools(
    gateway_url: str, tenant_a: TenantHandle, transport: str, path: str
) -> None:
    put = await ts_call(
        gateway_url + path, transport, tenant_a.headers, "data_put", {"key": f"ts-{transport}", "value": [1]}
    )
    assert put["exit"] == 0, put
    assert {"data_put", "data_get", "health_check"} <= set(put["tools"])
    assert put["result"]["structuredContent"]["created"] is True
    got = await ts_call(gateway_url + path, transport, tenant_a.headers, "data_get", {"key": f"ts-{transport}"})
    assert got["result"]["structuredContent"]["value"] == [1]
    assert "tenantry/event_id" in got["result"]["_meta"]


async def test_the_typescript_sdk_client_is_refused_another_tenants_id(
    gateway_url: str, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    headers = {**tenant_a.headers, "Tenant-ID": tenant_b.id}
    out = await ts_call(gateway_url + "/mcp", "http", headers, "data_list", {})
    assert out["exit"] == 1
    assert out["status"] == 403, out


async def test_the_typescript_sdk_client_without_credentials_gets_401(gateway_url: str, tenant_a: TenantHandle) -> None:
    out = await ts_call(gateway_url + "/mcp", "http", {"Tenant-ID": tenant_a.id}, "data_list", {})
    assert out["exit"] == 1
    assert out["status"] == 401, out
