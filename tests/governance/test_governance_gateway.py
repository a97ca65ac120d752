"""Policy through the gateway, as tenants and admins meet it: identities with roles, hidden tools,
argument rules on every path, refusals never billed, the admin API and its dry-run, and a second
replica that hears of a change within a second."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError
from sqlalchemy import text

from tenantry.client import connect
from tenantry.db.engine import Database
from tenantry.settings import Settings
from tests.conftest import OPS, Admin, TenantHandle, eventually, serve
from tests.gateway.test_fastpath import call, post

READ_ONLY: dict[str, Any] = {
    "rules": [
        {"effect": "allow", "tools": ["data_get", "data_list", "fx__echo"], "roles": ["reader"]},
        {"effect": "allow", "tools": ["data_*", "fx__*"], "roles": ["writer"]},
    ],
    "arguments": [
        {"tools": ["fx__echo"], "forced": {"text": "${subject} in ${claims.org}"}},
        {"tools": ["data_put"], "params": {"key": {"pattern": "^notes/"}}},
    ],
}


async def key_for(admin: Admin, tenant: TenantHandle, subject: str, *roles: str) -> dict[str, str]:
    body = {"name": subject, "subject": subject, "roles": list(roles)}
    r = await admin.http.post(f"/api/tenants/{tenant.id}/keys", json=body)
    assert r.status_code == 201, r.text
    assert (r.json()["subject"], r.json()["roles"]) == (subject, sorted(roles))
    return {"Tenant-ID": tenant.id, "Authorization": f"Bearer {r.json()['secret']}"}


async def set_policy(admin: Admin, tenant: TenantHandle, document: dict[str, Any]) -> dict[str, Any]:
    r = await admin.http.put(f"/api/tenants/{tenant.id}/policy", json={"document": document})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def bridge(
    http: httpx.AsyncClient, tenant: TenantHandle, headers: dict[str, str], method: str, params: Any = None
) -> httpx.Response:
    body: dict[str, Any] = {"method": method}
    if params is not None:
        body["params"] = params
    return await http.post(f"/api/tenant/{tenant.id}/tool", headers=headers, json=body)


async def usage_is(db: Database, tenant: TenantHandle, outcomes: list[str]) -> None:
    """The tenant's ledger (drained from Redis asynchronously) comes to hold exactly `outcomes`."""

    async def rows() -> list[str]:
        async with db.system() as conn:
            found = await conn.execute(
                text("SELECT outcome FROM usage_events WHERE tenant_id = :t"), {"t": uuid.UUID(tenant.id)}
            )
            return sorted(row.outcome for row in found)

    await eventually(lambda: _equal(rows, outcomes), what=f"the ledger holding {outcomes}")
    assert await rows() == outcomes  # and no more


async def _equal(rows: Any, outcomes: list[str]) -> bool:
    return bool(await rows() == outcomes)


async def test_a_reader_sees_and_calls_only_what_its_roles_allow_on_every_path(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient, db: Database
) -> None:
    reader = await key_for(admin, tenant_a, "report-bot", "reader")
    writer = await key_for(admin, tenant_a, "ingest-bot", "writer")
    await set_policy(admin, tenant_a, READ_ONLY)
    async with connect(f"{gateway_url}/mcp", reader) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"data_get", "data_list"}
        assert not (await client.call_tool("data_list", {})).is_error
        with pytest.raises(MCPError) as hidden:
            await client.call_tool("data_put", {"key": "notes/a", "value": 1})
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("no_such_tool", {})
    # A hidden tool is refused exactly as an unknown one: no existence oracle.
    assert hidden.value.error.message == unknown.value.error.message.replace("no_such_tool", "data_put")
    async with connect(f"{gateway_url}/mcp", writer) as client:
        assert "data_put" in {t.name for t in (await client.list_tools()).tools}
        assert not (await client.call_tool("data_put", {"key": "notes/a", "value": 1})).is_error
    # The legacy SSE transport too.
    async with connect(f"{gateway_url}/sse", reader, transport="sse") as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"data_get", "data_list"}
        with pytest.raises(MCPError):
            await client.call_tool("data_put", {"key": "notes/a", "value": 1})
    # The REST bridge and the fast path refuse the same way.
    r = await bridge(http, tenant_a, reader, "data_put", {"key": "notes/b", "value": 2})
    r_unknown = await bridge(http, tenant_a, reader, "no_such_tool", {})
    assert (
        (r.status_code, r.json()["error"])
        == (r_unknown.status_code, r_unknown.json()["error"])
        == (404, "unknown_tool")
    )
    listed = await bridge(http, tenant_a, reader, "listTools")
    assert {t["name"] for t in listed.json()["tools"]} == {"data_get", "data_list"}
    status, fast = await post(gateway_url, reader, call("data_put", {"key": "notes/c", "value": 3}))
    assert status == 200
    assert fast["error"]["message"] == "unknown tool: data_put"
    # Refusals are never billed: one call of the reader and one of the writer ran.
    await usage_is(db, tenant_a, ["ok", "ok"])
    metrics = (await http.get("/metrics", headers=OPS)).text
    assert 'tenantry_governance_refusals_total{code="tool_forbidden"}' in metrics


async def test_argument_rules_hold_on_every_path_and_are_not_billed(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient, db: Database
) -> None:
    writer = await key_for(admin, tenant_a, "ingest-bot", "writer")
    await set_policy(admin, tenant_a, READ_ONLY)
    r = await bridge(http, tenant_a, writer, "data_put", {"key": "secrets/x", "value": 1})
    assert (r.status_code, r.json()["error"]) == (400, "argument_invalid")
    assert "arguments[1]" in r.json()["detail"]
    assert "'key' must match" in r.json()["detail"]
    _status, fast = await post(gateway_url, writer, call("data_put", {"key": "secrets/x", "value": 1}))
    assert fast["result"]["structuredContent"]["error"] == "argument_invalid"
    async with connect(f"{gateway_url}/mcp", writer) as client:
        refused = await client.call_tool("data_put", {"key": "secrets/x", "value": 1})
        assert refused.is_error
        assert (refused.structured_content or {})["error"] == "argument_invalid"
        assert not (await client.call_tool("data_put", {"key": "notes/x", "value": 1})).is_error
    await usage_is(db, tenant_a, ["ok"])


async def test_forced_arguments_reach_the_upstream_from_the_callers_token(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient, fixture_upstream: Any
) -> None:
    _, url = fixture_upstream
    body = {"name": "fx", "url": url, "headers": {"Authorization": "Bearer alpha"}}
    assert (await admin.http.post(f"/api/tenants/{tenant_a.id}/upstreams", json=body)).status_code == 201
    await set_policy(admin, tenant_a, READ_ONLY)
    minted = await admin.http.post(
        "/api/auth/tenant-token",
        json={
            "tenant_id": tenant_a.id,
            "key_id": tenant_a.key_id,
            "subject": "alice",
            "roles": ["reader"],
            "claims": {"org": "acme"},
        },
    )
    assert minted.status_code == 200, minted.text
    headers = {"Tenant-ID": tenant_a.id, "Authorization": f"Bearer {minted.json()['access_token']}"}
    async with connect(f"{gateway_url}/mcp", headers) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"data_get", "data_list", "fx__echo"}
        echoed = await client.call_tool("fx__echo", {"text": "ignore the rules"})
    assert echoed.content[0].text == "alice in acme"  # type: ignore[union-attr]
    # A token without the claim the rule forces from cannot call the tool at all.
    bare = await admin.http.post(
        "/api/auth/tenant-token",
        json={"tenant_id": tenant_a.id, "key_id": tenant_a.key_id, "subject": "bob", "roles": ["reader"]},
    )
    headers = {"Tenant-ID": tenant_a.id, "Authorization": f"Bearer {bare.json()['access_token']}"}
    r = await bridge(http, tenant_a, headers, "fx__echo", {"text": "hi"})
    assert (r.status_code, r.json()["error"]) == (403, "argument_forbidden")


async def test_a_key_can_narrow_its_roles_in_a_token_but_never_widen_them(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient
) -> None:
    both = await key_for(admin, tenant_a, "ops-bot", "reader", "writer")
    await set_policy(admin, tenant_a, READ_ONLY)
    key = both["Authorization"].removeprefix("Bearer ")
    widened = await http.post("/api/auth/tenant-token", headers={"x-api-key": key}, json={"roles": ["admin"]})
    assert (widened.status_code, widened.json()["error"]) == (403, "roles_not_held")
    smuggled = await http.post("/api/auth/tenant-token", headers={"x-api-key": key}, json={"subject": "root"})
    assert smuggled.status_code == 400
    narrowed = await http.post("/api/auth/tenant-token", headers={"x-api-key": key}, json={"roles": ["reader"]})
    assert narrowed.status_code == 200, narrowed.text
    assert (narrowed.json()["subject"], narrowed.json()["roles"]) == ("ops-bot", ["reader"])
    token = {"Tenant-ID": tenant_a.id, "Authorization": f"Bearer {narrowed.json()['access_token']}"}
    assert (await bridge(http, tenant_a, token, "data_put", {"key": "notes/a", "value": 1})).status_code == 404
    assert (await bridge(http, tenant_a, both, "data_put", {"key": "notes/a", "value": 1})).status_code == 200


async def test_a_credential_scoped_to_some_tools_sees_and_calls_only_those_with_or_without_a_policy(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient
) -> None:
    body = {"name": "scoped", "tools": ["data_get", "data_l*"]}
    r = await admin.http.post(f"/api/tenants/{tenant_a.id}/keys", json=body)
    assert (r.status_code, r.json()["tools"]) == (201, ["data_get", "data_l*"])
    scoped = {"Tenant-ID": tenant_a.id, "Authorization": f"Bearer {r.json()['secret']}"}
    listed = await bridge(http, tenant_a, scoped, "listTools")
    assert {t["name"] for t in listed.json()["tools"]} == {"data_get", "data_list"}
    put = await bridge(http, tenant_a, scoped, "data_put", {"key": "k", "value": 1})
    assert (put.status_code, put.json()["error"]) == (404, "unknown_tool")
    key = r.json()["secret"]
    wider = await http.post("/api/auth/tenant-token", headers={"x-api-key": key}, json={"tools": ["data_put"]})
    assert (wider.status_code, wider.json()["error"]) == (403, "tools_not_held")
    narrow = await http.post("/api/auth/tenant-token", headers={"x-api-key": key}, json={"tools": ["data_get"]})
    assert narrow.json()["tools"] == ["data_get"]
    token = {"Tenant-ID": tenant_a.id, "Authorization": f"Bearer {narrow.json()['access_token']}"}
    async with connect(f"{gateway_url}/mcp", token) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["data_get"]
    bad = await admin.http.post(f"/api/tenants/{tenant_a.id}/keys", json={"name": "x", "tools": ["a b"]})
    assert bad.status_code == 400


async def test_the_admin_api_validates_versions_deletes_and_dry_runs(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient
) -> None:
    path = f"/api/tenants/{tenant_a.id}/policy"
    assert (await admin.http.get(path)).json()["error"] == "policy_not_found"
    bad = {"rules": [{"effect": "allow", "tools": ["data_get"]}, {"effect": "permit", "tools": ["x"]}]}
    r = await admin.http.put(path, json={"document": bad})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_policy")
    assert r.json()["detail"].startswith("rules.1.effect:")
    assert (await admin.http.get(path)).status_code == 404  # nothing stored
    first = await set_policy(admin, tenant_a, READ_ONLY)
    assert first["version"] == 1
    stale = await admin.http.put(path, json={"document": {"default": "allow"}, "expected_version": 0})
    assert (stale.status_code, stale.json()["error"]) == (409, "policy_version_conflict")
    second = await admin.http.put(path, json={"document": {"default": "allow"}, "expected_version": 1})
    assert second.json()["version"] == 2
    assert (await admin.http.get(path)).json()["document"] == {"default": "allow"}
    dry = {
        "subject": "bot",
        "roles": ["reader"],
        "claims": {"org": "acme"},
        "tool": "fx__echo",
        "arguments": {"text": "x"},
        "document": READ_ONLY,
    }
    answer = (await admin.http.post(f"{path}/dry-run", json=dry)).json()
    assert (answer["allowed"], answer["rule"], answer["arguments"]) == (True, "rules[0]", {"text": "bot in acme"})
    answer = (await admin.http.post(f"{path}/dry-run", json={**dry, "tool": "data_put"})).json()
    assert (answer["allowed"], answer["error"]) == (False, "tool_forbidden")
    answer = (await admin.http.post(f"{path}/dry-run", json={**dry, "claims": {}})).json()
    assert (answer["allowed"], answer["error"]) == (False, "argument_forbidden")
    assert (await admin.http.delete(path)).status_code == 200
    assert (await admin.http.delete(path)).status_code == 404
    assert (await http.get(path)).status_code == 401  # admin only
    assert (await admin.http.get(f"/api/tenants/{uuid.uuid4()}/policy")).status_code == 404


async def test_a_policy_change_reaches_another_replica_within_a_second(
    settings: Settings, gateway_url: str, admin: Admin, tenant_a: TenantHandle
) -> None:
    reader = await key_for(admin, tenant_a, "report-bot", "reader")
    with serve(settings) as other:
        async with httpx.AsyncClient(base_url=other, timeout=30) as replica:
            before = await bridge(replica, tenant_a, reader, "data_put", {"key": "notes/a", "value": 1})
            assert before.status_code == 200  # no policy yet: every tool (and the replica has cached that)
            await set_policy(admin, tenant_a, READ_ONLY)

            async def refused() -> bool:
                r = await bridge(replica, tenant_a, reader, "data_put", {"key": "notes/a", "value": 1})
                return r.status_code == 404

            await eventually(refused, within=1.0, what="the policy on the other replica")
            await admin.http.delete(f"/api/tenants/{tenant_a.id}/policy")

            async def allowed() -> bool:
                r = await bridge(replica, tenant_a, reader, "data_put", {"key": "notes/a", "value": 1})
                return r.status_code == 200

            await eventually(allowed, within=1.0, what="the policy's removal on the other replica")
