"""The audit trail through a running gateway: one record per request, call and admin change, on every path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tenantry.audit import store
from tenantry.audit.records import SYSTEM_TENANT, ArgumentDigests
from tenantry.client import connect
from tenantry.settings import Settings
from tests import conftest
from tests.conftest import Admin, TenantHandle, eventually, serve
from tests.gateway.test_fastpath import call, post
from tests.governance.test_governance_gateway import READ_ONLY, bridge, key_for, set_policy


async def trail(admin: Admin, tenant_id: str, **filters: Any) -> list[dict[str, Any]]:
    """The tenant's records matching `filters`, once everything written before this moment is stored.

    The drain stores the stream in order: when a marker request made now is in the trail, every record
    written before it is too."""
    marker = f"marker-{uuid.uuid4().hex}"
    base = f"/api/tenants/{tenant_id}/audit"
    r = await admin.http.get(base, params={"limit": 1}, headers={"X-Request-ID": marker})
    assert r.status_code == 200, r.text

    async def stored() -> bool:
        return bool((await admin.http.get(base, params={"request_id": marker})).json()["records"])

    await eventually(stored, what="the marker's audit record")
    r = await admin.http.get(base, params={**filters, "limit": 1000})
    assert r.status_code == 200, r.text
    records: list[dict[str, Any]] = r.json()["records"]
    return records


def rid() -> str:
    return f"rq-{uuid.uuid4().hex}"


async def test_a_refused_and_an_admitted_call_each_leave_exactly_one_record_on_every_path(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient, settings: Settings
) -> None:
    digests = ArgumentDigests(settings.secret_keys)
    h = tenant_a.headers
    # The REST bridge: a refused call (invalid arguments) and an admitted one.
    refused_id, admitted_id = rid(), rid()
    refused = await http.post(
        f"/api/tenant/{tenant_a.id}/tool",
        headers={**h, "X-Request-ID": refused_id},
        json={"method": "data_put", "params": {"key": "k"}},
    )
    assert refused.status_code == 400
    args = {"key": "k", "value": {"n": 1}}
    admitted = await http.post(
        f"/api/tenant/{tenant_a.id}/tool",
        headers={**h, "X-Request-ID": admitted_id},
        json={"method": "data_put", "params": args},
    )
    assert admitted.status_code == 200, admitted.text
    # The fast path (stateless JSON tools/call): an unknown tool.
    fast_id = rid()
    status, _ = await post(gateway_url, h, call("no_such_tool", {}), **{"X-Request-ID": fast_id})
    assert status == 200

    [r1] = await trail(admin, tenant_a.id, request_id=refused_id)
    [r2] = await trail(admin, tenant_a.id, request_id=admitted_id)
    [r3] = await trail(admin, tenant_a.id, request_id=fast_id)
    assert (r1["decision"], r1["reason"], r1["outcome"], r1["tool"]) == (
        "refused",
        "invalid_arguments",
        "invalid_arguments",
        "data_put",
    )
    assert (r1["transport"], r1["method"], r1["key_id"], r1["event_id"]) == (
        "rest",
        "tools/call",
        tenant_a.key_id,
        None,
    )
    assert (r2["decision"], r2["reason"], r2["outcome"]) == ("admitted", None, "ok")
    assert r2["event_id"] == admitted.json()["_meta"]["tenantry/event_id"]
    assert r2["latency_ms"] > 0
    # The arguments are kept as a keyed digest only, which matches what was sent and nothing else.
    assert r2["args"] is None
    assert digests.matches(uuid.UUID(tenant_a.id), args, r2["args_digest"])
    assert not digests.matches(uuid.UUID(tenant_a.id), {**args, "key": "other"}, r2["args_digest"])
    assert not digests.matches(uuid.UUID(int=1), args, r2["args_digest"])  # keyed per tenant
    assert (r3["transport"], r3["decision"], r3["reason"], r3["tool"]) == (
        "streamable_http",
        "refused",
        "unknown_tool",
        "no_such_tool",
    )


async def test_a_call_whose_name_holds_bytes_postgresql_cannot_store_is_still_recorded(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle
) -> None:
    ids = {rid(): "x\\u0000y", rid(): "x\\ud800y"}  # a NUL; a lone surrogate (JSON escapes, sent as is)
    for request_id, name in ids.items():
        body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' + name + '","arguments":{}}}'
        status, _ = await post(gateway_url, tenant_a.headers, body.encode(), **{"X-Request-ID": request_id})
        assert status == 200
    nul, surrogate = [await trail(admin, tenant_a.id, request_id=request_id) for request_id in ids]
    assert [r["tool"] for r in nul] == ["x\ufffdy"]
    assert [r["tool"] for r in surrogate] == ["x?y"]
    assert nul[0]["reason"] == surrogate[0]["reason"] == "unknown_tool"


async def test_every_mcp_request_leaves_one_record_on_both_transports_and_notifications_none(
    gateway_url: str, admin: Admin, tenant_b: TenantHandle
) -> None:
    reader = await key_for(admin, tenant_b, "report-bot", "reader")
    await set_policy(admin, tenant_b, READ_ONLY)
    for path, transport in (("/mcp", "streamable_http"), ("/sse", "sse")):
        async with connect(f"{gateway_url}{path}", reader, transport="sse" if transport == "sse" else "http") as c:
            await c.list_tools()
            assert not (await c.call_tool("data_list", {})).is_error
            with contextlib.suppress(MCPError):  # hidden by the policy: refused as an unknown tool
                await c.call_tool("data_put", {"key": "notes/x", "value": 1})
        records = await trail(admin, tenant_b.id, subject="report-bot")
        mine = [r for r in records if r["transport"] == transport]
        methods = [r["method"] for r in mine]
        # Whatever the client sent (a handshake, listings, two calls), each request once.
        assert len({r["request_id"] for r in mine}) == len(mine), methods
        assert {"initialize", "server/discover"} & set(methods), methods
        assert "tools/list" in methods
        calls = {r["tool"]: r for r in mine if r["method"] == "tools/call"}
        assert methods.count("tools/call") == len(calls) == 2, methods
        assert (calls["data_list"]["decision"], calls["data_list"]["outcome"]) == ("admitted", "ok")
        assert calls["data_list"]["event_id"] is not None
        # A tool the policy hides is refused as unknown, and recorded as what it was.
        assert (calls["data_put"]["decision"], calls["data_put"]["reason"]) == ("refused", "tool_forbidden")
        assert all(r["outcome"] for r in mine)


async def test_an_admin_change_leaves_one_record_with_before_and_after_and_never_a_secret(
    admin: Admin, tenant_a: TenantHandle
) -> None:
    change_id = rid()
    r = await admin.http.patch(f"/api/tenants/{tenant_a.id}", json={"plan": "pro"}, headers={"X-Request-ID": change_id})
    assert r.status_code == 200, r.text
    key_id = rid()
    made = await admin.http.post(
        f"/api/tenants/{tenant_a.id}/keys", json={"name": "ci"}, headers={"X-Request-ID": key_id}
    )
    assert made.status_code == 201
    secret = made.json()["secret"]
    failed_id = rid()
    bad = await admin.http.patch(
        f"/api/tenants/{tenant_a.id}", json={"plan": "platinum"}, headers={"X-Request-ID": failed_id}
    )
    assert bad.status_code == 400

    [change] = await trail(admin, tenant_a.id, request_id=change_id)
    assert (change["method"], change["subject"], change["decision"], change["status"]) == (
        "PATCH /api/tenants/{tenant_id}",
        "admin:key",
        "admitted",
        200,
    )
    assert change["detail"]["action"] == "tenant.update"
    assert change["detail"]["changes"] == {"plan": {"before": "free", "after": "pro"}} | {
        k: v for k, v in change["detail"]["changes"].items() if k == "updated_at"
    }
    [key] = await trail(admin, tenant_a.id, request_id=key_id)
    assert key["detail"]["action"] == "key.create"
    assert secret not in json.dumps(key)
    # A refused change is recorded too, as refused, with nothing changed.
    [failed] = await trail(admin, tenant_a.id, request_id=failed_id)
    assert (failed["decision"], failed["reason"], failed["detail"]) == ("refused", "invalid_plan", None)


async def test_a_refused_credential_goes_to_the_system_trail_with_the_tenant_it_claimed(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle
) -> None:
    bad_id = rid()
    headers = {
        "Tenant-ID": tenant_a.id,
        "Authorization": "Bearer tnt_wrong-but-well-formed-key-0000000000000000",
        "X-Request-ID": bad_id,
    }
    status, _ = await post(gateway_url, headers, call("data_list", {}))
    assert status == 401
    [record] = await trail(admin, str(SYSTEM_TENANT), request_id=bad_id)
    assert (record["decision"], record["reason"], record["status"]) == ("refused", "invalid_credentials", 401)
    assert record["detail"] == {"claimed_tenant": tenant_a.id}
    assert "tnt_wrong" not in json.dumps(record)
    assert not await trail(admin, tenant_a.id, request_id=bad_id)  # an unproven claim is not the tenant's
    # A CORS preflight asks and does nothing: no record.
    preflight_id = rid()
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        await http.options("/mcp", headers={"X-Request-ID": preflight_id, "Origin": "https://agent.example"})
    assert not await trail(admin, str(SYSTEM_TENANT), request_id=preflight_id)


async def test_a_tenant_that_opts_in_gets_its_arguments_recorded_with_personal_data_redacted(
    admin: Admin, tenant_b: TenantHandle, http: httpx.AsyncClient
) -> None:
    writer = await key_for(admin, tenant_b, "ingest-bot", "writer")
    await set_policy(admin, tenant_b, {**READ_ONLY, "audit": {"arguments": "redacted"}})
    request_id = rid()
    args = {"key": "notes/contact", "value": {"email": "alice@example.com", "note": "call +1 415 555 0100"}}
    r = await http.post(
        f"/api/tenant/{tenant_b.id}/tool",
        headers={**writer, "X-Request-ID": request_id},
        json={"method": "data_put", "params": args},
    )
    assert r.status_code == 200, r.text
    [record] = await trail(admin, tenant_b.id, request_id=request_id)
    [change] = [r for r in await trail(admin, tenant_b.id, method="PUT /api/tenants/{tenant_id}/policy")]
    assert change["detail"]["action"] == "policy.put"
    assert change["detail"]["changes"]["document"]["after"]["audit"] == {"arguments": "redacted"}
    assert record["args"]["key"] == "notes/contact"
    assert record["args"]["value"]["email"] == "[EMAIL]"
    assert "alice@example.com" not in json.dumps(record)
    assert "555 0100" not in json.dumps(record)
    bad = await admin.http.put(f"/api/tenants/{tenant_b.id}/policy", json={"document": {"audit": {"arguments": "raw"}}})
    assert bad.status_code == 400
    assert "audit.arguments" in bad.json()["detail"]


async def test_pages_filters_and_exports_cover_the_trail_exactly(
    admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient
) -> None:
    for n in range(7):
        params = {"key": f"k{n}", "value": n} if n % 2 else {"key": f"k{n}"}  # odd: admitted; even: refused
        await bridge(http, tenant_a, tenant_a.headers, "data_put", params)
    everything = await trail(admin, tenant_a.id, method="tools/call")
    assert len(everything) == 7
    assert [r["seq"] for r in everything] == sorted((r["seq"] for r in everything), reverse=True)  # newest first
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"method": "tools/call", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        r = await admin.http.get(f"/api/tenants/{tenant_a.id}/audit", params=params)
        pages += r.json()["records"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert [r["id"] for r in pages] == [r["id"] for r in everything]
    refused = await trail(admin, tenant_a.id, method="tools/call", decision="refused")
    assert len(refused) == 4
    assert {r["reason"] for r in refused} == {"invalid_arguments"}
    assert len(await trail(admin, tenant_a.id, tool="data_put", outcome="ok")) == 3

    jsonl = await admin.http.get(f"/api/tenants/{tenant_a.id}/audit/export", params={"method": "tools/call"})
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [r["id"] for r in lines] == [r["id"] for r in reversed(everything)]  # oldest first
    csv = await admin.http.get(
        f"/api/tenants/{tenant_a.id}/audit/export", params={"method": "tools/call", "format": "csv"}
    )
    rows = csv.text.splitlines()
    assert rows[0].startswith("at,seq,id,request_id")
    assert len(rows) == 8

    base = f"/api/tenants/{tenant_a.id}/audit"
    for params, code in (
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"cursor": store.encode_cursor(2**60, 1)}, "invalid_cursor"),  # past any record: not a 500
        ({"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "invalid_range"),
        ({"decision": "maybe"}, "invalid_request"),
        ({"limit": 0}, "invalid_request"),
        ({"subject": "a\x00b", "method": "tools/call"}, "invalid_request"),  # PostgreSQL cannot hold a NUL
        ({"tool": "echo\n"}, "invalid_request"),
    ):
        bad = await admin.http.get(base, params=params)
        assert (bad.status_code, bad.json()["error"]) == (400, code), params
    nul = await admin.http.get(f"{base}/export", params={"outcome": "\x00"})
    assert (nul.status_code, nul.json()["error"]) == (400, "invalid_request")
    missing = await admin.http.get(f"/api/tenants/{uuid.uuid4()}/audit")
    assert missing.status_code == 404
    anonymous = await http.get(base)
    assert anonymous.status_code == 401


async def test_a_stateful_session_with_streamed_answers_leaves_one_record_per_request(
    admin: Admin, tenant_b: TenantHandle
) -> None:
    with serve(conftest.test_settings(mcp_stateful=True, mcp_json_response=False)) as url:
        # A handshake-era client: it opens a session, and each answer comes back as an SSE stream.
        async with (
            httpx2.AsyncClient(headers=tenant_b.headers, timeout=30) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="legacy") as client,
        ):
            assert not (await client.call_tool("data_put", {"key": "stateful", "value": 1})).is_error
            assert (await client.call_tool("data_get", {"key": "missing"})).is_error  # a tool error
            with contextlib.suppress(MCPError):
                await client.call_tool("no_such_tool", {})
    records = await trail(admin, tenant_b.id, method="tools/call")
    calls = [r for r in records if r["session"]]
    assert sorted(r["tool"] for r in calls) == ["data_get", "data_put", "no_such_tool"]
    assert len({r["request_id"] for r in calls}) == 3
    assert len({r["session"] for r in calls}) == 1
    outcome = {r["tool"]: (r["decision"], r["outcome"]) for r in calls}
    assert outcome == {
        "data_put": ("admitted", "ok"),
        "data_get": ("admitted", "key_not_found"),
        "no_such_tool": ("refused", "unknown_tool"),
    }
    # The session's own requests are recorded too: its SSE stream (GET) and its end (DELETE).
    session = calls[0]["session"]
    methods = [r["method"] for r in await trail(admin, tenant_b.id) if r["session"] == session]
    assert methods.count("DELETE /mcp") == methods.count("GET /mcp") == 1


async def test_a_call_whose_client_goes_away_mid_call_leaves_one_record(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle, fixture_upstream: Any
) -> None:
    upstream, url = fixture_upstream
    body = {"name": "fx", "url": url, "headers": {"Authorization": "Bearer alpha"}}
    assert (await admin.http.post(f"/api/tenants/{tenant_a.id}/upstreams", json=body)).status_code == 201

    async def hang() -> None:
        async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
            await client.call_tool("fx__hang", {})

    waiting = asyncio.create_task(hang())
    await eventually(lambda: _holds(upstream), what="the upstream holding the call")
    waiting.cancel()  # the agent gives up: its connection closes
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    upstream.release()

    async def one_record() -> list[dict[str, Any]]:
        return await trail(admin, tenant_a.id, tool="fx__hang")

    records = await eventually(one_record, what="the abandoned call's record")
    assert len(records) == 1, records
    assert records[0]["outcome"] in ("cancelled", "ok")


async def _holds(upstream: Any) -> bool:
    return getattr(upstream, "_release", None) is not None
