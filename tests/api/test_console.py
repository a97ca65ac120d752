"""The admin console over plain HTTP: sign-in, the session cookie, CSRF, the redirect without a session,
and that a change made from the console is the REST API's change, audited the same way."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx
import pytest

from tenantry.api.console import PAGES
from tests import conftest
from tests.audit.test_trail import trail
from tests.conftest import ADMIN_KEY, Admin, TenantHandle, serve

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_PUBLIC = {"/console/sign-in", "/console/static/console.css"}


async def sign_in(http: httpx.AsyncClient, credential: str = ADMIN_KEY) -> str:
    """Sign `http` in; the CSRF token of its session."""
    r = await http.post("/console/sign-in", data={"credential": credential})
    assert r.status_code == 303, r.text
    page = await http.get("/console/tenants")
    assert page.status_code == 200, page.text
    found = _CSRF.search(page.text)
    assert found is not None
    return found.group(1)


def console_routes() -> list[tuple[str, str]]:
    """(method, path) of every console route with its parameters filled in."""
    out = []
    for module in PAGES:
        for route in module.router.routes:
            path = getattr(route, "path", "")
            for method in getattr(route, "methods", ()):
                if path in _PUBLIC or method == "HEAD":
                    continue
                filled = re.sub(r"\{tool:path\}", "echo", path)
                out.append((method, re.sub(r"\{[a-z_]+\}", str(uuid.uuid4()), filled)))
    return out


async def test_without_a_session_every_console_route_redirects_to_sign_in(gateway_url: str) -> None:
    routes = console_routes()
    assert len(routes) >= 15
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        for method, path in routes:
            r = await http.request(method, path, data={"csrf": "x"})
            if path == "/console":
                assert (r.status_code, r.headers["location"]) == (303, "/console/tenants")
                continue
            assert r.status_code == 303, (method, path, r.status_code)
            assert r.headers["location"] == "/console/sign-in", (method, path)
        form = await http.get("/console/sign-in")
    async with httpx.AsyncClient(base_url=gateway_url, cookies={"tenantry_console": "not-a-session"}) as stale_client:
        stale = await stale_client.get("/console/tenants")
    assert (stale.status_code, stale.headers["location"]) == (303, "/console/sign-in")
    assert form.status_code == 200
    assert 'name="credential"' in form.text
    assert "default-src 'none'" in form.headers["content-security-policy"]


async def test_a_bad_sign_in_gets_an_error_page_no_cookie_and_an_audit_record(gateway_url: str, admin: Admin) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        r = await http.post("/console/sign-in", data={"credential": "not-the-admin-key"})
        forged = await http.post("/console/sign-in", data={"credential": "a.b.c"})
    assert r.status_code == 401
    assert "neither the admin key nor a valid admin token" in r.text
    assert "set-cookie" not in r.headers
    assert forged.status_code == 401
    assert "set-cookie" not in forged.headers
    system = "00000000-0000-0000-0000-000000000000"
    records = await trail(admin, system, method="POST /console/sign-in", decision="refused")
    assert any(rec["outcome"] == "invalid_credentials" and rec["transport"] == "console" for rec in records)


async def test_failed_sign_ins_are_refused_past_the_limit_even_with_the_right_key() -> None:
    settings = conftest.test_settings(console_sign_in_attempts=2, redis_key_prefix=f"console-{uuid.uuid4().hex}")
    with serve(settings) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(2):
                assert (await http.post("/console/sign-in", data={"credential": "wrong"})).status_code == 401
            r = await http.post("/console/sign-in", data={"credential": ADMIN_KEY})
    assert r.status_code == 429
    assert "Too many failed sign-ins" in r.text
    assert "set-cookie" not in r.headers


async def test_the_session_cookie_is_httponly_strict_and_signing_out_ends_the_session(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        r = await http.post("/console/sign-in", data={"credential": ADMIN_KEY})
        cookie = r.headers["set-cookie"]
        assert r.status_code == 303
        assert cookie.startswith("tenantry_console=")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Path=/console" in cookie
        assert "Secure" not in cookie  # plain HTTP here; over TLS it is Secure (next test)
        session = http.cookies["tenantry_console"]
        page = await http.get("/console/tenants")
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-store"
        csrf = _CSRF.search(page.text)
        assert csrf is not None
        out = await http.post("/console/sign-out", data={"csrf": csrf.group(1)})
        assert (out.status_code, out.headers["location"]) == (303, "/console/sign-in")
    async with httpx.AsyncClient(base_url=gateway_url, cookies={"tenantry_console": session}) as replay:
        again = await replay.get("/console/tenants")
    assert (again.status_code, again.headers["location"]) == (303, "/console/sign-in")


async def test_over_tls_the_session_cookie_is_secure(settings: Any) -> None:
    from tenantry.app import create_app

    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://gateway.example") as http:
        r = await http.post("/console/sign-in", data={"credential": ADMIN_KEY})
    await app.state.services.aclose_redis()
    assert r.status_code == 303
    assert "Secure" in r.headers["set-cookie"]
    assert "strict-transport-security" in r.headers


async def test_an_admin_token_signs_in_too(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        token = (await http.post("/api/auth/token", json={"key": ADMIN_KEY})).json()["access_token"]
        await sign_in(http, token)


async def test_a_change_without_the_csrf_token_is_refused_and_changes_nothing(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle
) -> None:
    name = f"csrf-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        csrf = await sign_in(http)
        missing = await http.post("/console/tenants", data={"name": name})
        wrong = await http.post("/console/tenants", data={"name": name, "csrf": csrf[:-2] + "xx"})
        suspend = await http.post(f"/console/tenants/{tenant_a.id}/update", data={"status": "suspended"})
        revoke = await http.post(f"/console/tenants/{tenant_a.id}/keys/{tenant_a.key_id}/revoke", data={})
    for r in (missing, wrong, suspend, revoke):
        assert r.status_code == 403
        assert "no valid CSRF token" in r.text
    listed = (await admin.http.get("/api/tenants", params={"limit": 1000})).json()["tenants"]
    assert name not in {t["name"] for t in listed}
    assert (await admin.http.get(f"/api/tenants/{tenant_a.id}")).json()["status"] == "active"
    keys = (await admin.http.get(f"/api/tenants/{tenant_a.id}/keys")).json()["keys"]
    assert all(k["revoked_at"] is None for k in keys)


async def test_console_changes_are_the_rest_changes_and_leave_the_same_audit_records(
    gateway_url: str, admin: Admin
) -> None:
    name = f"console-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        csrf = await sign_in(http)
        made = await http.post("/console/tenants", data={"name": name, "plan": "pro", "csrf": csrf})
        assert made.status_code == 303
        tenant_id = made.headers["location"].split("/")[3].split("?")[0]
        bad = await http.post(f"/console/tenants/{tenant_id}/update", data={"plan": "nope", "limits": "", "csrf": csrf})
        assert bad.status_code == 400
        assert "unknown plan" in bad.text
        badjson = await http.post(f"/console/tenants/{tenant_id}/update", data={"limits": "{", "csrf": csrf})
        assert badjson.status_code == 400
        assert "limits is not valid JSON" in badjson.text
        limits = '{"calls_per_window": 7}'
        ok = await http.post(
            f"/console/tenants/{tenant_id}/update", data={"plan": "free", "limits": limits, "csrf": csrf}
        )
        assert ok.status_code == 303
        key = await http.post(f"/console/tenants/{tenant_id}/keys", data={"name": "ci", "csrf": csrf})
        assert key.status_code == 200
        secret = re.search(r'id="key-secret">([^<]+)<', key.text)
        assert secret is not None
        page = await http.get(f"/console/tenants/{tenant_id}")
        assert secret.group(1) not in page.text  # shown once
        assert "calls_per_window" in page.text
        suspend = await http.post(f"/console/tenants/{tenant_id}/update", data={"status": "suspended", "csrf": csrf})
        assert suspend.status_code == 303
        found = await http.get("/console/tenants", params={"q": name[-8:], "status": "suspended", "plan": "free"})
        assert name in found.text
        other = await http.get("/console/tenants", params={"q": name[-8:], "status": "active"})
        assert name not in other.text
    tenant = (await admin.http.get(f"/api/tenants/{tenant_id}")).json()
    assert (tenant["plan"], tenant["status"], tenant["limits"]) == ("free", "suspended", {"calls_per_window": 7})
    records = await trail(admin, tenant_id)
    actions = [r["detail"]["action"] for r in records if r.get("detail") and "action" in r["detail"]]
    assert actions.count("tenant.update") == 2
    assert {"tenant.create", "key.create"} <= set(actions)
    create = next(r for r in records if (r.get("detail") or {}).get("action") == "tenant.create")
    assert create["transport"] == "console"
    assert create["subject"] == "console:admin:key"
    assert create["method"] == "POST /console/tenants"
    assert create["detail"]["changes"]["name"] == {"before": None, "after": name}
    key_record = next(r for r in records if (r.get("detail") or {}).get("action") == "key.create")
    assert "secret" not in str(key_record["detail"]) or "[secret]" in str(key_record["detail"])
    refused = [r for r in records if r["decision"] == "refused" and r["method"].startswith("POST /console/")]
    assert refused, "the refused plan change is in the trail too"


@pytest.mark.parametrize("page", ["", "/usage", "/health", "/policy", "/audit", "/policy/dry-run", "/offboard"])
async def test_every_tenant_page_renders_for_a_new_tenant(gateway_url: str, tenant_a: TenantHandle, page: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        await sign_in(http)
        r = await http.get(f"/console/tenants/{tenant_a.id}{page}")
        missing = await http.get(f"/console/tenants/{uuid.uuid4()}{page}")
    assert r.status_code == 200, r.text
    assert "<h1>" in r.text
    assert missing.status_code == 404
    assert "tenant_not_found" in missing.text
    assert missing.headers["content-type"].startswith("text/html")
    # Of the policies the browser enforces (all of them), the console's own allows no script at all.
    assert any("script-src" not in policy for policy in r.headers.get_list("content-security-policy"))


async def test_kill_switch_policy_and_upstream_forms_act_through_the_rest_functions(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle
) -> None:
    base = f"/console/tenants/{tenant_a.id}"
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        csrf = await sign_in(http)
        killed = await http.post(f"{base}/kills", data={"scope": "tenant", "reason": "incident 7", "csrf": csrf})
        assert killed.status_code == 303
        live = (await admin.http.get("/api/kills", params={"tenant_id": tenant_a.id})).json()["kills"]
        assert [(k["scope"], k["reason"]) for k in live] == [("tenant", "incident 7")]
        page = await http.get(base)
        assert "incident 7" in page.text
        lifted = await http.post(f"{base}/kills/{live[0]['id']}/lift", data={"csrf": csrf})
        assert lifted.status_code == 303
        assert (await admin.http.get("/api/kills", params={"tenant_id": tenant_a.id})).json()["kills"] == []

        no_target = await http.post(f"{base}/kills", data={"scope": "tool", "csrf": csrf})
        assert no_target.status_code == 400
        assert "names its target" in no_target.text

        document = '{"default": "allow", "rules": [{"effect": "deny", "tools": ["data_*"]}]}'
        bad_policy = await http.post(f"{base}/policy", data={"document": "[1, 2", "csrf": csrf})
        assert bad_policy.status_code == 400
        saved = await http.post(f"{base}/policy", data={"document": document, "expected_version": "0", "csrf": csrf})
        assert saved.status_code == 303, saved.text
        assert (await admin.http.get(f"/api/tenants/{tenant_a.id}/policy")).json()["version"] == 1
        assert "data_*" in (await http.get(f"{base}/policy")).text
        stale = await http.post(f"{base}/policy", data={"document": document, "expected_version": "0", "csrf": csrf})
        assert stale.status_code == 409

        private = await http.post(
            f"{base}/upstreams", data={"name": "fx", "url": "http://169.254.169.254/mcp", "csrf": csrf}
        )
        assert private.status_code == 400
    assert (await admin.http.get(f"/api/tenants/{tenant_a.id}/upstreams")).json()["upstreams"] == []


async def test_the_upstream_form_registers_a_rest_api_from_an_uploaded_openapi_document(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle
) -> None:
    base = f"/console/tenants/{tenant_a.id}"
    document = {
        "openapi": "3.1.0",
        "info": {"title": "Shop", "version": "1"},
        "paths": {"/items": {"get": {"operationId": "list_items", "summary": "List the items.", "tags": ["items"]}}},
    }
    form = {"name": "shop", "url": "http://127.0.0.1:9/", "transport": "openapi", "csrf": ""}
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        form["csrf"] = await sign_in(http)
        assert "openapi" in (await http.get(base)).text  # offered next to the MCP transports
        bad = await http.post(f"{base}/upstreams", data={**form, "document": "openapi: [unclosed"})
        assert bad.status_code == 400
        assert (await admin.http.get(f"/api/tenants/{tenant_a.id}/upstreams")).json()["upstreams"] == []
        made = await http.post(
            f"{base}/upstreams",
            data={**form, "document": json.dumps(document), "operations": '{"include": ["tag:items"]}'},
        )
        assert made.status_code == 303, made.text
    (upstream,) = (await admin.http.get(f"/api/tenants/{tenant_a.id}/upstreams")).json()["upstreams"]
    assert (upstream["name"], upstream["transport"]) == ("shop", "openapi")
