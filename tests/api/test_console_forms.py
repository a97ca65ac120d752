"""Console forms over HTTP: offboarding a tenant (the REST DELETE, behind typing its name), the policy
dry-run (the REST dry-run), and validation errors answered as pages on console routes while REST routes
keep answering JSON."""

from __future__ import annotations

import json
import re
import uuid
from html import unescape

import httpx

from tests.api.test_console import sign_in
from tests.audit.test_trail import trail
from tests.conftest import Admin, TenantHandle
from tests.governance.test_governance_gateway import READ_ONLY, set_policy


async def test_offboarding_needs_the_tenants_name_typed_and_is_the_rest_delete(
    gateway_url: str, admin: Admin, http: httpx.AsyncClient
) -> None:
    tenant = await admin.create_tenant(f"leaving-{uuid.uuid4().hex[:6]}")
    name = (await admin.http.get(f"/api/tenants/{tenant.id}")).json()["name"]
    base = f"/console/tenants/{tenant.id}"
    async with httpx.AsyncClient(base_url=gateway_url) as console:
        csrf = await sign_in(console)
        assert f'href="{base}/offboard"' in (await console.get(base)).text
        confirm = await console.get(f"{base}/offboard")
        assert confirm.status_code == 200
        assert f"Type the tenant&#x27;s name ({name}) to confirm" in confirm.text
        wrong = await console.post(f"{base}/offboard", data={"confirm": name.upper(), "csrf": csrf})
        missing = await console.post(f"{base}/offboard", data={"csrf": csrf})
        forged = await console.post(f"{base}/offboard", data={"confirm": name})
        assert (wrong.status_code, missing.status_code, forged.status_code) == (400, 400, 403)
        assert "is not the tenant" in unescape(wrong.text)
        assert "type the tenant&#x27;s name to confirm" in missing.text
        assert "Nothing was changed" in wrong.text
        # Nothing changed: still active, its key still calls.
        assert (await admin.http.get(f"/api/tenants/{tenant.id}")).json()["status"] == "active"
        listed = await http.post(f"/api/tenant/{tenant.id}/tool", json={"method": "listTools"}, headers=tenant.headers)
        assert listed.status_code == 200

        done = await console.post(f"{base}/offboard", data={"confirm": f" {name} ", "csrf": csrf})
        assert done.status_code == 303, done.text
        assert done.headers["location"].startswith(f"{base}?notice=")
        shown = await console.get(done.headers["location"])
        assert "offboarded" in shown.text
        assert f'href="{base}/offboard"' not in shown.text
        assert "already" in (await console.get(f"{base}/offboard")).text
    after = (await admin.http.get(f"/api/tenants/{tenant.id}")).json()
    assert after["status"] == "deprovisioned"
    keys = (await admin.http.get(f"/api/tenants/{tenant.id}/keys")).json()["keys"]
    assert keys
    assert all(k["revoked_at"] is not None for k in keys)
    refused = await http.post(f"/api/tenant/{tenant.id}/tool", json={"method": "listTools"}, headers=tenant.headers)
    assert refused.status_code in (401, 403)
    records = await trail(admin, tenant.id)
    actions = ("tenant.deprovision", "tenant.offboard")  # without billing / with it
    (offboarded,) = [r for r in records if (r.get("detail") or {}).get("action") in actions]
    assert (offboarded["transport"], offboarded["method"]) == ("console", "POST /console/tenants/{tenant_id}/offboard")
    assert offboarded["detail"]["changes"]["status"] == {"before": "active", "after": "deprovisioned"}


async def test_the_policy_dry_run_page_answers_what_the_rest_dry_run_does(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle
) -> None:
    stored = await set_policy(admin, tenant_a, READ_ONLY)
    base = f"/console/tenants/{tenant_a.id}/policy"
    asked = {"subject": "bot", "roles": "reader", "claims": '{"org": "acme"}', "tool": "fx__echo"}
    async with httpx.AsyncClient(base_url=gateway_url) as console:
        csrf = await sign_in(console)
        assert f'href="{base}/dry-run"' in (await console.get(base)).text
        empty = await console.get(f"{base}/dry-run")
        assert empty.status_code == 200
        assert 'name="arguments"' in empty.text
        allowed = await console.post(f"{base}/dry-run", data={**asked, "arguments": '{"text": "x"}', "csrf": csrf})
        assert allowed.status_code == 200, allowed.text
        decision = re.search(r'<p id="decision">(.*?)</p>', allowed.text)
        assert decision is not None
        assert "Allowed" in decision.group(1)
        assert "rules[0]" in decision.group(1)
        assert json.loads(unescape(re.findall(r"<pre>(.*?)</pre>", allowed.text, re.S)[0])) == {"text": "bot in acme"}
        assert "{&quot;text&quot;: &quot;x&quot;}" in allowed.text  # the form keeps what was asked

        denied = await console.post(f"{base}/dry-run", data={**asked, "tool": "data_put", "csrf": csrf})
        assert "Refused" in denied.text
        assert "tool_forbidden" in denied.text
        draft = await console.post(
            f"{base}/dry-run", data={**asked, "tool": "data_put", "document": '{"default": "allow"}', "csrf": csrf}
        )
        assert "Allowed" in draft.text

        bad_json = await console.post(f"{base}/dry-run", data={**asked, "arguments": "{text: x", "csrf": csrf})
        assert bad_json.status_code == 400
        assert "arguments is not valid JSON" in bad_json.text
        not_object = await console.post(f"{base}/dry-run", data={**asked, "arguments": "[1]", "csrf": csrf})
        assert not_object.status_code == 400
        assert "arguments: Input should be a valid dictionary" in not_object.text
        no_subject = await console.post(f"{base}/dry-run", data={"tool": "fx__echo", "csrf": csrf})
        assert no_subject.status_code == 400
        assert "subject: Field required" in no_subject.text
        bad_draft = await console.post(
            f"{base}/dry-run", data={**asked, "document": '{"rules": [{"effect": "permit"}]}', "csrf": csrf}
        )
        assert bad_draft.status_code == 400
        assert "invalid_policy" in bad_draft.text
        forged = await console.post(f"{base}/dry-run", data=asked)
        assert forged.status_code == 403
    rest = await admin.http.post(
        f"/api/tenants/{tenant_a.id}/policy/dry-run",
        json={"subject": "bot", "roles": ["reader"], "claims": {"org": "acme"}, "tool": "fx__echo", "arguments": {}},
    )
    assert (rest.json()["allowed"], rest.json()["rule"]) == (True, "rules[0]")
    after = (await admin.http.get(f"/api/tenants/{tenant_a.id}/policy")).json()
    assert after["version"] == stored["version"]  # a dry run stores nothing


async def test_console_validation_errors_are_pages_while_rest_ones_stay_json(
    gateway_url: str, admin: Admin, tenant_a: TenantHandle
) -> None:
    base = f"/console/tenants/{tenant_a.id}"
    async with httpx.AsyncClient(base_url=gateway_url) as console:
        csrf = await sign_in(console)
        pages = {
            "malformed id in the path": await console.post(f"{base}/kills/not-a-uuid/lift", data={"csrf": csrf}),
            "key id": await console.post(f"{base}/keys/123/revoke", data={"csrf": csrf}),
            "query too long": await console.get("/console/tenants", params={"q": "x" * 300}),
            "bad query value": await console.get(f"{base}/audit", params={"decision": "both"}),
            "form field missing": await console.post("/console/tenants", data={"csrf": csrf}),
            "tenant id": await console.get("/console/tenants/not-a-uuid/audit"),
        }
        for case, r in pages.items():
            assert r.status_code == 400, (case, r.status_code, r.text)
            assert r.headers["content-type"].startswith("text/html"), case
            assert 'role="alert"' in r.text, case
            assert r.text.startswith("<!doctype html>"), case
        assert "kill_id in the address: Input should be a valid UUID" in pages["malformed id in the path"].text
        assert "q in the query: String should have at most 200 characters" in pages["query too long"].text
        assert "name: String should have at least 1 character" in pages["form field missing"].text
        nowhere = await console.get("/console/no-such-page")
        assert (nowhere.status_code, nowhere.headers["content-type"][:9]) == (404, "text/html")
        wrong_method = await console.get("/console/sign-out")
        assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")
        assert wrong_method.headers["content-type"].startswith("text/html")
    # Nothing was lifted or revoked, and REST answers the same mistakes in JSON.
    keys = (await admin.http.get(f"/api/tenants/{tenant_a.id}/keys")).json()["keys"]
    assert all(k["revoked_at"] is None for k in keys)
    rest = {
        "path": await admin.http.delete("/api/kills/not-a-uuid"),
        "key": await admin.http.delete(f"/api/tenants/{tenant_a.id}/keys/123"),
        "query": await admin.http.get(f"/api/tenants/{tenant_a.id}/audit", params={"decision": "both"}),
        "body": await admin.http.post("/api/tenants", json={}),
    }
    for case, r in rest.items():
        assert r.status_code == 400, case
        assert r.headers["content-type"] == "application/json", case
        assert r.json()["error"] == "invalid_request", case
    missing = await admin.http.get("/api/no-such-thing")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
