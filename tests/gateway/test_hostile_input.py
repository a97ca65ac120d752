"""Bad input is the caller's error, refused before it costs anything, on every path; a tool's own bug
frees its slot, is recorded and is never billed."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tenantry.app import create_app
from tenantry.client import connect
from tenantry.db.engine import Database
from tenantry.settings import Settings
from tenantry.tools.base import Arguments, BuiltinTool, ToolContext
from tests.conftest import ADMIN_KEY, Admin, TenantHandle, serve_asgi
from tests.metering.test_gateway_metering import eventually, ledger_rows, limited_tenant

MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def quota_used(admin: Admin, tenant: TenantHandle) -> int:
    r = await admin.http.get(f"/api/tenants/{tenant.id}/usage")
    assert r.status_code == 200, r.text
    used: int = r.json()["quota"]["used"]
    return used


# Raw JSON bodies, as a client that does not use a strict encoder can send them.
BAD_VALUES = {
    "nan": b"NaN",
    "infinity": b"-Infinity",
    "overflow": b"1e400",
    "lone surrogate": b'"\\ud800"',
    "nul in a value": b'"a\\u0000b"',
    "nul deep inside": b'{"a": [{"b": "\\u0000"}]}',
    "nesting too deep": b"[" * 70 + b"1" + b"]" * 70,
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
async def test_values_no_tool_can_take_are_refused_before_the_meter_on_every_path(
    http: httpx.AsyncClient, admin: Admin, db: Database, case: str
) -> None:
    tenant = await limited_tenant(admin, calls_per_window=50)
    value = BAD_VALUES[case]
    params = b'{"key": "k", "value": ' + value + b"}"
    rest = await http.post(
        f"/api/tenant/{tenant.id}/tool",
        content=b'{"method": "data_put", "params": ' + params + b"}",
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert rest.status_code == 400, rest.text
    assert rest.json()["error"] == "invalid_arguments"
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "data_put", "arguments": '
    fast = await http.post("/mcp", content=body + params + b"}}", headers={**tenant.headers, **MCP_HEADERS})
    assert fast.status_code == 200, fast.text
    result = fast.json()["result"]
    assert result["isError"] is True
    assert result["structuredContent"]["error"] == "invalid_arguments"
    assert await quota_used(admin, tenant) == 0
    ok = await http.post(
        f"/api/tenant/{tenant.id}/tool", json={"method": "data_list", "params": {}}, headers=tenant.headers
    )
    assert ok.status_code == 200
    await eventually(lambda: _rows_are(db, tenant, ["ok"]))  # the good call's event, and nothing else


async def _rows_are(db: Database, tenant: TenantHandle, outcomes: list[str]) -> bool:
    return sorted(row.outcome for row in await ledger_rows(db, tenant)) == outcomes


async def test_the_sdk_path_refuses_a_nul_before_the_meter_too(gateway_url: str, admin: Admin) -> None:
    tenant = await limited_tenant(admin, calls_per_window=50)
    async with connect(f"{gateway_url}/mcp", tenant.headers) as client:
        result = await client.call_tool("data_put", {"key": "k", "value": "a\x00b"})
    assert result.is_error
    assert result.structured_content is not None
    assert result.structured_content["error"] == "invalid_arguments"
    assert "\x00" not in result.structured_content["detail"]
    assert await quota_used(admin, tenant) == 0


@pytest.mark.parametrize("key", ["k" * 257, "del\x7f", "nel\u0085", "line\u2028sep", "rtl\u202eoverride", "bom\ufeff"])
async def test_keys_the_store_would_refuse_are_refused_by_every_data_tool_before_the_meter(
    http: httpx.AsyncClient, admin: Admin, key: str
) -> None:
    tenant = await limited_tenant(admin, calls_per_window=50)
    url = f"/api/tenant/{tenant.id}/tool"
    for method, params in (
        ("data_put", {"key": key, "value": 1}),
        ("data_get", {"key": key}),
        ("data_delete", {"key": key}),
    ):
        r = await http.post(url, json={"method": method, "params": params}, headers=tenant.headers)
        assert r.status_code == 400, (method, r.text)
        assert r.json()["error"] == "invalid_arguments"  # never key_not_found for a key put would refuse
        assert key not in r.json()["detail"]
    assert await quota_used(admin, tenant) == 0


async def test_the_published_schema_states_the_enforced_key_limit(settings: Settings) -> None:
    narrow = settings.model_copy(update={"data_max_key_length": 40})
    with serve_asgi(create_app(narrow)) as (url, _server):
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            tenant = await Admin(http).create_tenant()
            listed = await http.post(
                f"/api/tenant/{tenant.id}/tool", json={"method": "listTools"}, headers=tenant.headers
            )
            schemas = {t["name"]: t["inputSchema"] for t in listed.json()["tools"]}
            too_long = await http.post(
                f"/api/tenant/{tenant.id}/tool",
                json={"method": "data_put", "params": {"key": "k" * 41, "value": 1}},
                headers=tenant.headers,
            )
    assert schemas["data_put"]["properties"]["key"]["maxLength"] == 40
    assert schemas["data_list"]["properties"]["prefix"]["maxLength"] == 40
    assert too_long.json()["error"] == "invalid_arguments"


async def test_a_value_over_the_size_limit_is_refused_before_the_meter(http: httpx.AsyncClient, admin: Admin) -> None:
    tenant = await limited_tenant(admin, calls_per_window=50)
    big = {"method": "data_put", "params": {"key": "big", "value": "x" * 70_000}}
    r = await http.post(f"/api/tenant/{tenant.id}/tool", json=big, headers=tenant.headers)
    assert r.status_code == 400
    assert r.json()["error"] == "value_too_large"
    assert await quota_used(admin, tenant) == 0


class _NoArgs(Arguments):
    pass


async def _broken(ctx: ToolContext, args: Any) -> dict[str, Any]:
    return {"text": "\ud800".encode().decode()}  # a bug: raises UnicodeEncodeError


async def test_a_tool_that_raises_frees_its_slot_is_recorded_and_is_never_billed(
    settings: Settings, db: Database
) -> None:
    app = create_app(settings)
    catalog = app.state.services.calls._catalog
    catalog._builtins["health_check"] = BuiltinTool(
        name="health_check", title="Broken", description="Raises.", arguments=_NoArgs, run=_broken
    )
    with serve_asgi(app) as (url, _server):
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            tenant = await limited_tenant(Admin(http), max_concurrent=1)
            for _ in range(4):  # with its slot leaked, the second call would be concurrency_limited
                r = await http.post(
                    f"/api/tenant/{tenant.id}/tool", json={"method": "health_check"}, headers=tenant.headers
                )
                assert r.status_code == 500, r.text
                assert r.json()["error"] == "internal_error"
            async with connect(f"{url}/mcp", tenant.headers) as client:
                result = await client.call_tool("health_check", {})
            assert result.is_error
            assert result.structured_content is not None
            assert result.structured_content["error"] == "internal_error"
            await eventually(lambda: _rows_are(db, tenant, ["internal_error"] * 5))
    async with db.system() as conn:
        billable = await conn.execute(
            text("SELECT count(*) FROM usage_events WHERE tenant_id = :t AND outcome = 'ok'"),
            {"t": uuid.UUID(tenant.id)},
        )
    assert billable.scalar_one() == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/tenants", {"name": "nul\x00name"}),
        ("POST", "/api/tenants", {"name": "tab\tname"}),
        ("GET", "/api/tenants?offset=9223372036854775808", None),
        ("GET", "/api/tenants?limit=1&offset=-1", None),
    ],
)
async def test_admin_input_the_database_cannot_take_is_a_json_400(
    admin: Admin, method: str, path: str, body: Any
) -> None:
    before = (await admin.http.get("/api/tenants", params={"limit": 1000})).json()["tenants"]
    r = await admin.http.request(method, path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request"
    assert (await admin.http.get("/api/tenants", params={"limit": 1000})).json()["tenants"] == before


async def test_a_key_name_with_a_nul_is_refused(admin: Admin) -> None:
    tenant = await admin.create_tenant()
    r = await admin.http.post(f"/api/tenants/{tenant.id}/keys", json={"name": "a\x00b"})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"
