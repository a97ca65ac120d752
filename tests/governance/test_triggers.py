"""Automatic triggers: a looping agent and a probing subject are flagged, throttled or killed, as the
tenant's policy says, and every firing is recorded."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Admin, TenantHandle, eventually
from tests.governance.test_governance_gateway import bridge, key_for, set_policy


@pytest.fixture(autouse=True)
async def no_kill_outlives_its_test(admin: Admin) -> Any:
    yield
    for live in (await admin.http.get("/api/kills")).json()["kills"]:
        await admin.http.delete(f"/api/kills/{live['id']}")


async def firings(admin: Admin, tenant: TenantHandle) -> list[dict[str, Any]]:
    r = await admin.http.get(f"/api/tenants/{tenant.id}/triggers")
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["firings"]
    return found


async def test_an_agent_in_a_loop_is_killed_and_only_it(
    admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient
) -> None:
    looping = await key_for(admin, tenant_a, "looping-agent")
    calm = await key_for(admin, tenant_a, "calm-agent")
    loop = {"count": 3, "seconds": 60, "action": "kill"}
    await set_policy(admin, tenant_a, {"default": "allow", "triggers": {"loop": loop}})
    same = {"key": "status"}
    for _ in range(3):
        assert (await bridge(http, tenant_a, looping, "data_get", same)).json()["error"] == "key_not_found"
        assert (await bridge(http, tenant_a, looping, "data_get", {"key": "other"})).status_code == 404
    fourth = await bridge(http, tenant_a, looping, "data_get", same)
    assert (fourth.status_code, fourth.json()["error"]) == (403, "killed")
    assert "trigger loop" in fourth.json()["detail"]
    assert (await bridge(http, tenant_a, looping, "data_list", {})).json()["error"] == "killed"  # the whole subject
    assert (await bridge(http, tenant_a, calm, "data_get", same)).json()["error"] == "key_not_found"
    (kill,) = (await admin.http.get("/api/kills", params={"tenant_id": tenant_a.id})).json()["kills"]
    assert (kill["scope"], kill["target"]) == ("subject", "looping-agent")
    (fired,) = await firings(admin, tenant_a)
    assert (fired["trigger"], fired["action"], fired["subject"], fired["tool"]) == (
        "loop",
        "kill",
        "looping-agent",
        "data_get",
    )


async def test_a_probing_subject_is_throttled_for_the_window_then_free(
    admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient
) -> None:
    prober = await key_for(admin, tenant_a, "prober", "reader")
    probing = {"count": 2, "seconds": 1, "action": "throttle"}
    policy = {"rules": [{"effect": "allow", "tools": ["data_get", "data_list"], "roles": ["reader"]}]}
    await set_policy(admin, tenant_a, {**policy, "triggers": {"probing": probing}})
    for tool in ("data_put", "data_delete"):
        assert (await bridge(http, tenant_a, prober, tool, {"key": "k", "value": 1})).json()["error"] == "unknown_tool"
    third = await bridge(http, tenant_a, prober, "admin_tool", {})
    assert (third.status_code, third.json()["error"]) == (429, "throttled")
    assert (await bridge(http, tenant_a, prober, "data_list", {})).json()["error"] == "throttled"

    async def free() -> bool:
        return (await bridge(http, tenant_a, prober, "data_list", {})).status_code == 200

    await eventually(free, within=3.0, what="the end of the throttle")
    assert [(f["trigger"], f["action"]) for f in await firings(admin, tenant_a)] == [("probing", "throttle")]


async def test_a_flag_records_and_stops_nothing(admin: Admin, tenant_a: TenantHandle, http: httpx.AsyncClient) -> None:
    loop = {"count": 1, "seconds": 60, "action": "flag"}
    await set_policy(admin, tenant_a, {"default": "allow", "triggers": {"loop": loop}})
    for _ in range(3):
        assert (await bridge(http, tenant_a, tenant_a.headers, "data_list", {})).status_code == 200
    # fires on the 2nd call, counts afresh, fires again on the 4th: once so far
    assert [(f["trigger"], f["action"]) for f in await firings(admin, tenant_a)] == [("loop", "flag")]
    assert (await admin.http.get("/api/kills")).json()["kills"] == []


async def test_a_bad_trigger_is_refused_with_its_path(admin: Admin, tenant_a: TenantHandle) -> None:
    bad = {"triggers": {"loop": {"count": 0, "seconds": 60, "action": "kill"}}}
    r = await admin.http.put(f"/api/tenants/{tenant_a.id}/policy", json={"document": bad})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_policy")
    assert r.json()["detail"].startswith("triggers.loop.count:")
    bad = {"triggers": {"probing": {"count": 5, "seconds": 60, "action": "explode"}}}
    r = await admin.http.put(f"/api/tenants/{tenant_a.id}/policy", json={"document": bad})
    assert r.json()["detail"].startswith("triggers.probing.action:")
