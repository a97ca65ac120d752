"""The whole gateway on a Redis Cluster (`TENANTRY_REDIS_CLUSTER`), as tenants and ops see it: quotas
hold, every admitted call is billed once, /health reads the sharded ledger, the console keeps its sessions
there, and nothing lands on the single Redis the rest of the suite uses."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from tenantry.db.engine import Database
from tenantry.dev.redis_cluster import LocalCluster
from tenantry.settings import Settings
from tests import conftest
from tests.api.test_console import sign_in
from tests.conftest import ADMIN_KEY, OPS, Admin, serve
from tests.metering.test_gateway_metering import bridge, ledger_count_is


async def test_quotas_and_billing_hold_on_a_redis_cluster(
    settings: Settings, redis_cluster: LocalCluster, db: Database, redis: Redis
) -> None:
    prefix = f"rc-app-{uuid.uuid4().hex[:8]}"
    on_cluster = settings.model_copy(
        update={"redis_url": redis_cluster.url, "redis_cluster": True, "redis_key_prefix": prefix}
    )
    with serve(on_cluster) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            admin = Admin(httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30))
            tenants = [await admin.create_tenant() for _ in range(6)]
            for tenant in tenants:
                r = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": {"calls_per_window": 4}})
                assert r.status_code == 200, r.text
            answers = await asyncio.gather(
                *(bridge(http, tenant, "data_list", {}) for tenant in tenants for _ in range(6))
            )
            for i in range(len(tenants)):
                codes = sorted(r.status_code for r in answers[i * 6 : i * 6 + 6])
                assert codes == [200] * 4 + [429] * 2
            for tenant in tenants:
                await ledger_count_is(db, tenant, 4)
            health = await http.get(f"/health?tenant={tenants[0].id}", headers=OPS)
            # The console's session lives on whichever master its key's slot names.
            assert await sign_in(http)
            bad = await http.post("/console/sign-in", data={"credential": "wrong"})
            assert bad.status_code == 401
            await admin.http.aclose()
    assert health.status_code == 200, health.text
    checks = health.json()["checks"]
    assert checks["redis"]["status"] == "ok"
    assert checks["ledger"]["status"] == "ok"
    assert [key async for key in redis.scan_iter(f"{prefix}*")] == []  # all of it went to the cluster


def test_a_cluster_needs_the_lean_client_and_a_tcp_url() -> None:
    with pytest.raises(ValidationError, match="TENANTRY_REDIS_LEAN_CLIENT"):
        conftest.test_settings(redis_cluster=True, redis_lean_client=False)
    with pytest.raises(ValidationError, match="redis:// or rediss://"):
        conftest.test_settings(redis_cluster=True, redis_url="unix:///tmp/redis.sock")
