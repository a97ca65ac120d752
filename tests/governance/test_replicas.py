"""Two gateway processes sharing one database: a policy change and a kill made through one are in force
at the other within a second (each process has its own caches and its own LISTEN connection)."""

from __future__ import annotations

import httpx

from tenantry.settings import Settings
from tests.conftest import Admin, TenantHandle, eventually, free_port
from tests.governance.test_governance_gateway import READ_ONLY, bridge, key_for, set_policy
from tests.metering.test_outages import _start_gateway, _wait_until_serving


async def test_a_policy_change_and_a_kill_reach_another_gateway_process_within_a_second(
    settings: Settings, admin: Admin, tenant_a: TenantHandle
) -> None:
    reader = await key_for(admin, tenant_a, "report-bot", "reader")
    port = free_port()
    process = _start_gateway(settings, port)
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_until_serving(url)
        async with httpx.AsyncClient(base_url=url, timeout=10) as other:

            async def status() -> int:
                r = await bridge(other, tenant_a, reader, "data_put", {"key": "notes/a", "value": 1})
                return r.status_code

            assert await status() == 200  # no policy yet, and the other process has cached that
            await set_policy(admin, tenant_a, READ_ONLY)

            async def hidden() -> bool:
                return await status() == 404

            await eventually(hidden, within=1.0, what="the policy at the other process")
            made = await admin.http.post("/api/kills", json={"scope": "tenant", "tenant_id": tenant_a.id})
            assert made.status_code == 201

            async def killed() -> bool:
                r = await bridge(other, tenant_a, reader, "data_get", {"key": "notes/a"})
                return r.status_code == 403 and r.json()["error"] == "killed"

            await eventually(killed, within=1.0, what="the kill at the other process")
            assert (await admin.http.delete(f"/api/kills/{made.json()['id']}")).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=15)
