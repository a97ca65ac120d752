"""Metering when things break: Redis stopped under a running gateway, and the gateway SIGKILLed mid-load.

Each test starts what it breaks (its own redis-server, its own gateway process), so the shared
services the rest of the suite uses are never touched.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tenantry.db.engine import Database
from tenantry.dev import ensure_redis, stop_redis
from tenantry.settings import Settings
from tests import conftest
from tests.conftest import ADMIN_KEY, JWT_SECRET, OPS, Admin, TenantHandle, free_port, serve
from tests.metering.test_gateway_metering import bridge, eventually, ledger_rows

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def own_redis(tmp_path: Path, settings: Settings) -> Iterator[str]:
    url = f"redis://127.0.0.1:{free_port()}/0"
    ensure_redis(url, tmp_path)
    try:
        yield url
    finally:
        stop_redis(url, tmp_path)


async def test_redis_down_refuses_free_serves_paid_records_the_pass_and_recovers(
    own_redis: str, tmp_path: Path, db: Database
) -> None:
    with serve(conftest.test_settings(redis_url=own_redis)) as url:
        async with httpx.AsyncClient(base_url=url, headers=ADMIN_HEADERS, timeout=30) as http:
            admin = Admin(http)
            free = await admin.create_tenant(plan="free")
            paid = await admin.create_tenant(plan="starter")
            assert (await bridge(http, free, "data_list", {})).status_code == 200
            assert (await http.get("/health")).status_code == 200

            async def drained() -> bool:  # this Redis keeps nothing across the restart below
                return len(await ledger_rows(db, free)) == 1

            await eventually(drained)
            assert stop_redis(own_redis, tmp_path)
            refused = await bridge(http, free, "data_list", {})
            served = await bridge(http, paid, "data_put", {"key": "during-outage", "value": 1})
            health = await http.get("/health", headers=OPS)
            metrics = (await http.get("/metrics", headers=OPS)).text

            ensure_redis(own_redis, tmp_path)

            async def free_is_served_again() -> bool:
                return (await bridge(http, free, "data_list", {})).status_code == 200

            await eventually(free_is_served_again)

            async def healthy_again() -> bool:
                return (await http.get("/health")).status_code == 200

            await eventually(healthy_again)

    assert refused.status_code == 503
    assert refused.json()["error"] == "meter_unavailable"
    assert "Retry-After" in refused.headers
    assert served.status_code == 200, served.text
    assert health.status_code == 503
    assert health.json()["checks"]["redis"]["state"] == "down"
    assert health.json()["checks"]["redis"]["when_down"]["free"] == "fail_closed"
    assert 'tenantry_meter_unavailable_total{plan="starter",policy="fail_open"} 1.0' in metrics
    assert 'tenantry_meter_unavailable_total{plan="free",policy="fail_closed"} 1.0' in metrics
    # The paid call that passed unmetered is in the ledger (written straight to PostgreSQL), marked so.
    rows = await ledger_rows(db, paid)
    assert [(row.tool, row.outcome, row.metered) for row in rows] == [("data_put", "ok", False)]
    # The free tenant's refused call left no event; its two served calls did.
    assert len(await ledger_rows(db, free)) == 2


async def test_a_graceful_shutdown_drains_every_usage_event_before_exit(settings: Settings, db: Database) -> None:
    # No takeover of unstored events during the test: what reaches PostgreSQL is what the drain moved.
    with serve(conftest.test_settings(ledger_claim_idle_seconds=3600)) as url:
        async with httpx.AsyncClient(base_url=url, headers=ADMIN_HEADERS, timeout=30) as http:
            tenant = await Admin(http).create_tenant(plan="pro")
            answers = await asyncio.gather(*(bridge(http, tenant, "data_list", {}) for _ in range(20)))
    assert [r.status_code for r in answers] == [200] * 20
    assert len(await ledger_rows(db, tenant)) == 20


def _gateway_env(settings: Settings, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "TENANTRY_ENVIRONMENT": "test",
        "TENANTRY_DATABASE_URL": settings.database_url,
        "TENANTRY_REDIS_URL": settings.redis_url,
        "TENANTRY_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "TENANTRY_ADMIN_API_KEY": ADMIN_KEY,
        "TENANTRY_JWT_SECRET": JWT_SECRET,
        "TENANTRY_PORT": str(port),
        # Take over a killed process's unstored events quickly (the default is 30 s).
        "TENANTRY_LEDGER_CLAIM_IDLE_SECONDS": "0.2",
    }


def _start_gateway(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tenantry.cli", "serve", "--log-level", "warning"],
        env=_gateway_env(settings, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_until_serving(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=2) as http:

        async def up() -> bool:
            try:
                return (await http.get("/health")).status_code in (200, 503)
            except httpx.TransportError:
                return False

        await eventually(up, within=30)


async def test_a_sigkilled_gateway_loses_no_event_or_audit_record_of_a_returned_answer_and_duplicates_none(
    settings: Settings, db: Database
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workers, kill_after = 8, 150
    proc = _start_gateway(settings, port)
    returned: list[str] = []
    refusals: list[str] = []  # request ids of refused calls whose answer came back
    try:
        await _wait_until_serving(url)
        async with httpx.AsyncClient(base_url=url, headers=ADMIN_HEADERS, timeout=30) as http:
            tenant: TenantHandle = await Admin(http).create_tenant(plan="pro")

        enough = asyncio.Event()

        async def worker(i: int) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                for n in range(10_000):
                    try:
                        if n % 5 == 4:  # a refused call (invalid arguments) now and then
                            refused = await bridge(http, tenant, "data_put", {"key": f"w{i}-{n}"})
                            assert refused.status_code == 400, refused.text
                            refusals.append(refused.headers["x-request-id"])
                            continue
                        r = await bridge(http, tenant, "data_put", {"key": f"w{i}-{n}", "value": n})
                    except httpx.TransportError:
                        return  # the gateway is gone: this call returned no result
                    assert r.status_code == 200, r.text
                    body: dict[str, Any] = r.json()
                    returned.append(body["_meta"]["tenantry/event_id"])
                    if len(returned) >= kill_after:
                        enough.set()

        tasks = [asyncio.create_task(worker(i)) for i in range(workers)]
        await asyncio.wait_for(enough.wait(), timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    restarted = _start_gateway(settings, port)
    try:
        await _wait_until_serving(url)

        async def all_returned_results_are_in_the_ledger() -> bool:
            stored = {str(row.event_id) for row in await ledger_rows(db, tenant)}
            return stored >= set(returned)

        await eventually(all_returned_results_are_in_the_ledger, within=30)

        async def every_answer_is_audited() -> bool:
            async with db.system_data(uuid.UUID(tenant.id)) as conn:  # its trail, wherever its tier keeps it
                rows = (
                    await conn.execute(
                        text("SELECT event_id, request_id FROM audit_records WHERE tenant_id = :t"),
                        {"t": uuid.UUID(tenant.id)},
                    )
                ).all()
            return {str(r.event_id) for r in rows} >= set(returned) and {r.request_id for r in rows} >= set(refusals)

        await eventually(every_answer_is_audited, within=30)
        async with db.system_data(uuid.UUID(tenant.id)) as conn:
            audited = (
                await conn.execute(
                    text(
                        "SELECT count(event_id) AS n, count(DISTINCT event_id) AS distinct_ids FROM audit_records"
                        " WHERE tenant_id = :t AND method = 'tools/call'"
                    ),
                    {"t": uuid.UUID(tenant.id)},
                )
            ).one()
        async with db.system() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*) AS n, count(DISTINCT event_id) AS distinct_ids FROM usage_events"
                        " WHERE tenant_id = :t"
                    ),
                    {"t": uuid.UUID(tenant.id)},
                )
            ).one()
        async with db.system_data(uuid.UUID(tenant.id)) as conn:  # wherever its tier keeps its data
            written = (
                await conn.execute(
                    text("SELECT count(*) FROM tenant_data WHERE tenant_id = :t"), {"t": uuid.UUID(tenant.id)}
                )
            ).scalar_one()
    finally:
        restarted.terminate()
        restarted.wait(timeout=15)
    assert len(returned) == len(set(returned)) >= kill_after
    assert row.n == row.distinct_ids
    # Every returned result is billed once; at most the calls in flight at the kill (which ran but
    # whose result never came back) add an event each.
    assert len(returned) <= row.n <= len(returned) + workers
    assert row.n <= written  # no event without the call having run
    # One audit record per admitted call, none twice (a replayed stream entry is stored once).
    assert audited.n == audited.distinct_ids == row.n
    assert refusals


async def test_a_hung_redis_costs_a_paid_call_one_timeout_and_health_answers_at_once(
    own_redis: str, tmp_path: Path
) -> None:
    port = int(own_redis.rsplit(":", 1)[1].split("/")[0])
    pid = int((tmp_path / f"redis-{port}" / "redis.pid").read_text().split()[0])
    with serve(conftest.test_settings(redis_url=own_redis)) as url:
        async with httpx.AsyncClient(base_url=url, headers=ADMIN_HEADERS, timeout=30) as http:
            paid = await Admin(http).create_tenant(plan="starter")
            assert (await bridge(http, paid, "data_list", {})).status_code == 200
            os.kill(pid, signal.SIGSTOP)
            try:
                took = []
                for n in range(10):
                    started = time.perf_counter()
                    r = await bridge(http, paid, "data_put", {"key": f"hung-{n}", "value": n})
                    took.append(time.perf_counter() - started)
                    assert r.status_code == 200, r.text
                started = time.perf_counter()
                health = await http.get("/health", headers=OPS)
                health_took = time.perf_counter() - started
            finally:
                os.kill(pid, signal.SIGCONT)

            async def metered_again() -> bool:
                return (await http.get("/health")).status_code == 200

            await eventually(metered_again)
    assert took[0] < 1.5, took  # one meter timeout (0.5 s), and the ledger does not wait for another
    # The breaker is open: later calls are decided at once (events to PostgreSQL), except one probe per
    # interval (0.5 s, then 1 s, ...): on a slow machine ten calls may outlast the first interval or two.
    waited = [t for t in took[1:] if t >= 0.4]
    assert len(waited) <= 2, took
    assert health.status_code == 503
    assert health.json()["checks"]["redis"]["state"] == "down"
    assert health_took < 1.0, health_took
