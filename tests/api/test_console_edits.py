"""Changing what exists from the console: an upstream (URL, sealed credentials, costs, enabled, an openapi
upstream's filters; deleted after a confirmation) and a key's roles and tool scope, through the REST API's
own handlers (`PATCH /api/tenants/{id}/keys/{key_id}` is new); bad input is a clear error page and
changes nothing. A key narrowed anywhere is refused a tool at once, on every replica."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus

import httpx
import pytest

from tenantry.app import create_app
from tenantry.settings import Settings
from tests import conftest
from tests.api.test_console import sign_in
from tests.audit.test_trail import trail
from tests.conftest import Admin, TenantHandle, eventually, serve_asgi
from tests.test_cli import run as cli
from tests.upstream_servers import FixtureUpstream, serve_upstream


async def call(
    base_url: str, tenant: TenantHandle, method: str, params: dict[str, Any] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        body = {"method": method, "params": params or {}}
        return await http.post(f"/api/tenant/{tenant.id}/tool", json=body, headers=tenant.headers)


async def listed(base_url: str, tenant: TenantHandle) -> set[str]:
    r = await call(base_url, tenant, "listTools")
    assert r.status_code == 200, r.text
    return {tool["name"] for tool in r.json()["tools"]}


async def keys_of(admin: Admin, tenant: TenantHandle) -> dict[str, dict[str, Any]]:
    found = (await admin.http.get(f"/api/tenants/{tenant.id}/keys")).json()["keys"]
    return {key["id"]: key for key in found}


async def test_a_key_narrowed_from_the_console_is_refused_a_tool_it_could_call_before_at_once(
    gateway_url: str, admin: Admin
) -> None:
    tenant = await admin.create_tenant()
    put = {"key": "k", "value": 1}
    assert (await call(gateway_url, tenant, "data_put", put)).status_code == 200
    page = f"/console/tenants/{tenant.id}/keys/{tenant.key_id}"
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        csrf = await sign_in(http)
        assert page in (await http.get(f"/console/tenants/{tenant.id}")).text  # each key links to its page
        shown = await http.get(page)
        assert shown.status_code == 200
        assert 'name="tools"' in shown.text
        narrowed = await http.post(
            f"{page}/update", data={"roles": "ops, ops auditor", "tools": "health_check data_get", "csrf": csrf}
        )
        assert narrowed.status_code == 303, narrowed.text
        refused = await call(gateway_url, tenant, "data_put", put)  # the very next call: no cache to wait out
        bad = await http.post(f"{page}/update", data={"roles": "not a role!", "tools": "data_put", "csrf": csrf})
        worse = await http.post(f"{page}/update", data={"roles": "", "tools": "data^put", "csrf": csrf})
        missing = await http.get(f"/console/tenants/{tenant.id}/keys/{uuid.uuid4()}")
    assert refused.status_code != 200
    assert refused.json()["error"] in {"unknown_tool", "forbidden", "tool_forbidden"}, refused.text
    assert (await call(gateway_url, tenant, "data_get", {"key": "k"})).status_code == 200
    assert await listed(gateway_url, tenant) == {"health_check", "data_get"}
    for r in (bad, worse):
        assert r.status_code == 400
        assert "Nothing was changed" in r.text
    assert missing.status_code == 404
    assert "key_not_found" in missing.text
    key = (await keys_of(admin, tenant))[tenant.key_id]
    assert (key["roles"], key["tools"]) == (["auditor", "ops"], ["health_check", "data_get"])
    records = await trail(admin, tenant.id)
    update = next(r for r in records if (r.get("detail") or {}).get("action") == "key.update")
    assert (update["transport"], update["method"]) == (
        "console",
        "POST /console/tenants/{tenant_id}/keys/{key_id}/update",
    )
    assert update["detail"]["changes"]["tools"] == {"before": None, "after": ["health_check", "data_get"]}


async def test_the_rest_patch_of_a_key_changes_only_what_it_names_and_refuses_bad_input(
    gateway_url: str, admin: Admin
) -> None:
    tenant = await admin.create_tenant()
    url = f"/api/tenants/{tenant.id}/keys/{tenant.key_id}"
    scoped = await admin.http.patch(url, json={"tools": ["data_*"]})
    assert scoped.status_code == 200, scoped.text
    roles = await admin.http.patch(url, json={"roles": ["ops"]})
    assert (roles.json()["roles"], roles.json()["tools"]) == (["ops"], ["data_*"])  # tools omitted: kept
    assert "data_put" in await listed(gateway_url, tenant)
    assert "health_check" not in await listed(gateway_url, tenant)
    opened = await admin.http.patch(url, json={"tools": None})  # null: any tool
    assert (opened.json()["roles"], opened.json()["tools"]) == (["ops"], None)
    assert "health_check" in await listed(gateway_url, tenant)
    before = await keys_of(admin, tenant)
    async with httpx.AsyncClient(base_url=gateway_url) as anonymous:
        unauthenticated = await anonymous.patch(url, json={"tools": []})
    bad = [
        await admin.http.patch(url, json={"tools": ["no spaces"]}),
        await admin.http.patch(url, json={"roles": ["ok"], "subject": "x"}),  # not a field of the patch
        await admin.http.patch(url, json={"roles": "ops"}),
        await admin.http.patch(f"/api/tenants/{tenant.id}/keys/not-a-uuid", json={"roles": []}),
    ]
    unknown = await admin.http.patch(f"/api/tenants/{tenant.id}/keys/{uuid.uuid4()}", json={"roles": []})
    other = await admin.create_tenant()
    elsewhere = await admin.http.patch(f"/api/tenants/{other.id}/keys/{tenant.key_id}", json={"roles": []})
    assert unauthenticated.status_code == 401
    for r in bad:
        assert r.status_code in (400, 422), r.text
        assert {"error", "detail"} <= r.json().keys()
    assert (unknown.status_code, unknown.json()["error"]) == (404, "key_not_found")
    assert (elsewhere.status_code, elsewhere.json()["error"]) == (404, "key_not_found")
    assert await keys_of(admin, tenant) == before
    assert (await admin.http.delete(url)).status_code == 200
    revoked = await admin.http.patch(url, json={"roles": []})
    assert (revoked.status_code, revoked.json()["error"]) == (409, "key_revoked")


@pytest.fixture
def replica() -> Iterator[str]:
    """A second gateway on the same database, trusting cached credentials for five minutes."""
    with serve_asgi(create_app(conftest.test_settings(auth_cache_ttl_seconds=300.0))) as (url, _server):
        yield url


async def test_a_key_narrowed_through_one_replica_is_refused_by_another_within_a_second(
    replica: str, admin: Admin
) -> None:
    tenant = await admin.create_tenant()
    assert (await call(replica, tenant, "data_put", {"key": "k", "value": 1})).status_code == 200  # cached there
    narrowed = await admin.http.patch(f"/api/tenants/{tenant.id}/keys/{tenant.key_id}", json={"tools": ["data_get"]})
    assert narrowed.status_code == 200, narrowed.text

    async def refused() -> bool:
        return (await call(replica, tenant, "data_put", {"key": "k", "value": 2})).status_code != 200

    await eventually(refused, within=1.5, what="the narrowed scope on the other replica")


async def test_a_key_narrowed_with_the_cli_is_refused_by_a_running_gateway_within_a_second(
    replica: str, admin: Admin, settings: Settings
) -> None:
    tenant = await admin.create_tenant()
    assert (await call(replica, tenant, "data_put", {"key": "k", "value": 1})).status_code == 200
    bad = cli(settings, "key", "set", "--tenant", tenant.id, tenant.key_id, "--tool", "no spaces")
    assert bad.returncode != 0
    assert "not a tool name" in bad.stderr
    done = cli(settings, "key", "set", "--tenant", tenant.id, tenant.key_id, "--tool", "data_get", "--role", "ops")
    assert done.returncode == 0, done.stderr
    assert "may call data_get" in done.stdout

    async def refused() -> bool:
        return (await call(replica, tenant, "data_put", {"key": "k", "value": 2})).status_code != 200

    await eventually(refused, within=1.5, what="the scope set with the CLI")
    key = (await keys_of(admin, tenant))[tenant.key_id]
    assert (key["roles"], key["tools"]) == (["ops"], ["data_get"])
    opened = cli(settings, "key", "set", "--tenant", tenant.id, tenant.key_id, "--any-tool", "--json")
    assert json.loads(opened.stdout)["key"]["tools"] is None


async def test_an_upstream_is_edited_disabled_and_deleted_from_the_console_with_credentials_never_shown(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle
) -> None:
    upstream = FixtureUpstream()
    with serve_upstream(upstream) as (upstream_url, _server):
        body = {"name": "fx", "url": upstream_url, "headers": {"Authorization": "Bearer alpha"}}
        made = await admin.http.post(f"/api/tenants/{tenant_a.id}/upstreams", json=body)
        assert made.status_code == 201, made.text
        rest = f"/api/tenants/{tenant_a.id}/upstreams/{made.json()['id']}"
        base = f"/console/tenants/{tenant_a.id}/upstreams/{made.json()['id']}"
        assert {"fx__echo", "fx__rich"} <= await listed(gateway_url, tenant_a)
        async with httpx.AsyncClient(base_url=gateway_url) as http:
            csrf = await sign_in(http)
            shown = await http.get(base)
            assert shown.status_code == 200
            assert "Authorization" in shown.text  # the header's name ...
            assert "alpha" not in shown.text  # ... never its value
            form = {"url": upstream_url, "enabled": "true", "costs": "{}", "headers": "", "csrf": csrf}
            swapped = await http.post(
                f"{base}/update", data={**form, "headers": '{"Authorization": "Bearer beta"}', "costs": '{"echo": 3}'}
            )
            assert swapped.status_code == 303, swapped.text
            assert "beta" not in (await http.get(base)).text
            tools = await listed(gateway_url, tenant_a)  # beta's credentials see echo alone
            assert "fx__echo" in tools
            assert "fx__rich" not in tools
            now = (await admin.http.get(rest)).json()
            bad = {
                "negative cost": {**form, "costs": '{"echo": -1}'},
                "malformed JSON": {**form, "headers": "{"},
                "link-local URL": {**form, "url": "http://169.254.169.254/mcp"},
                "state": {**form, "enabled": "maybe"},
                "reserved header": {**form, "headers": '{"Host": "evil"}'},
            }
            for what, data in bad.items():
                r = await http.post(f"{base}/update", data=data)
                assert r.status_code == 400, (what, r.status_code)
                assert "Nothing was changed" in r.text, what
            assert (await admin.http.get(rest)).json() == now

            disabled = await http.post(f"{base}/update", data={**form, "costs": '{"echo": 3}', "enabled": "false"})
            assert disabled.status_code == 303
            assert "(enabled)" in unquote_plus(disabled.headers["location"])  # only what changed was sent
            assert not {t for t in await listed(gateway_url, tenant_a) if t.startswith("fx__")}
            off = await call(gateway_url, tenant_a, "fx__echo", {"text": "hi"})
            assert off.status_code != 200
            assert "disabled" in (await http.get(base)).text
            enabled = await http.post(f"{base}/update", data={**form, "costs": '{"echo": 3}'})
            assert enabled.status_code == 303
            assert "fx__echo" in await listed(gateway_url, tenant_a)

            confirm = await http.get(f"{base}/delete")
            assert confirm.status_code == 200
            assert "cannot be undone" in confirm.text
            unconfirmed = await http.post(f"{base}/delete", data={"confirm": "", "csrf": csrf})
            wrong = await http.post(f"{base}/delete", data={"confirm": "fy", "csrf": csrf})
            for r in (unconfirmed, wrong):
                assert r.status_code == 400
                assert "not_confirmed" not in r.text or "to confirm" in r.text
            assert (await admin.http.get(rest)).status_code == 200
            deleted = await http.post(f"{base}/delete", data={"confirm": "fx", "csrf": csrf})
            assert deleted.status_code == 303
            assert deleted.headers["location"].startswith(f"/console/tenants/{tenant_a.id}?")
            assert (await http.get(base)).status_code == 404
        assert not {t for t in await listed(gateway_url, tenant_a) if t.startswith("fx__")}
    assert (await admin.http.get(rest)).status_code == 404
    final = (await admin.http.get(f"/api/tenants/{tenant_a.id}/upstreams")).json()["upstreams"]
    assert final == []
    records = await trail(admin, tenant_a.id)
    actions = [(r["detail"]["action"], r["transport"]) for r in records if "action" in (r.get("detail") or {})]
    assert actions.count(("upstream.update", "console")) == 3
    assert ("upstream.delete", "console") in actions
    assert "alpha" not in json.dumps(records)  # credentials are sealed: the trail says they were replaced
    assert "beta" not in json.dumps(records)


async def test_an_openapi_upstreams_filters_are_edited_from_the_console(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle
) -> None:
    document = {
        "openapi": "3.1.0",
        "info": {"title": "Shop", "version": "1"},
        "paths": {
            "/items": {"get": {"operationId": "list_items", "tags": ["items"]}},
            "/orders": {"get": {"operationId": "list_orders", "tags": ["orders"]}},
        },
    }
    body = {
        "name": "shop",
        "url": "http://127.0.0.1:9/",
        "transport": "openapi",
        "document": document,
        "operations": {"include": ["tag:items"]},
    }
    made = await admin.http.post(f"/api/tenants/{tenant_a.id}/upstreams", json=body)
    assert made.status_code == 201, made.text
    rest = f"/api/tenants/{tenant_a.id}/upstreams/{made.json()['id']}"
    base = f"/console/tenants/{tenant_a.id}/upstreams/{made.json()['id']}"
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        csrf = await sign_in(http)
        page = await http.get(base)
        assert 'name="operations"' in page.text
        form = {"url": "http://127.0.0.1:9/", "enabled": "true", "costs": "{}", "csrf": csrf}
        bad = await http.post(f"{base}/update", data={**form, "operations": '{"include": 5}'})
        assert bad.status_code == 400
        assert (await admin.http.get(rest)).json()["operations"] == {"include": ["tag:items"]}
        saved = await http.post(f"{base}/update", data={**form, "operations": '{"include": ["tag:orders"]}'})
        assert saved.status_code == 303, saved.text
    now = (await admin.http.get(rest)).json()
    assert now["operations"] == {"include": ["tag:orders"]}
    assert now["document"] == "uploaded"
    tools = await listed(gateway_url, tenant_a)
    assert "shop__list_orders" in tools
    assert "shop__list_items" not in tools


async def test_the_7_day_usage_page_plots_a_call_in_hourly_bars(gateway_url: str, admin: Admin) -> None:
    tenant = await admin.create_tenant()
    assert (await call(gateway_url, tenant, "data_put", {"key": "k", "value": 1})).status_code == 200
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        await sign_in(http)

        async def plotted() -> str | None:
            r = await http.get(f"/console/tenants/{tenant.id}/usage", params={"hours": "168"})
            assert r.status_code == 200
            return r.text if 'data-name="data_put" data-measure="calls" data-total="1"' in r.text else None

        page = await eventually(plotted, within=10, what="the call in the 7-day plot")
    assert "Calls and units per hour, per tool" in page
    assert 'id="total-calls">1<' in page
    assert page.count("data_put: calls per hour (1)") == 1
    assert "last 7 days (hourly)" in page
