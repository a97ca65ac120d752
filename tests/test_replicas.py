"""Three gateway processes on one database and one Redis, behind a round-robin balancer: they behave as one.

Every replica is a real `tenantry serve` process and the balancer is `tenantry balance` (round robin per
connection); a test that wants a request on a given replica opens a new connection per request, or
talks to the replica directly. See README "Replicas".
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tenantry.db.engine import Database
from tenantry.settings import Settings
from tests.billing.fake_stripe import FakeStripe, fake_stripe
from tests.conftest import ADMIN_KEY, OPS, Admin, TenantHandle, eventually
from tests.metering.test_gateway_metering import bridge, ledger_rows
from tests.replica_fleet import Fleet, call, fleet, mcp

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def billing_env(stripe: FakeStripe) -> dict[str, str]:
    return {
        "TENANTRY_STRIPE_API_KEY": "sk_test_fake",
        "TENANTRY_STRIPE_API_BASE": stripe.url,
        "TENANTRY_STRIPE_MAX_NETWORK_RETRIES": "0",
        "TENANTRY_BILLING_REPORT_INTERVAL_SECONDS": "0.3",
    }


@pytest.fixture(scope="module")
def stripe() -> Iterator[FakeStripe]:
    with fake_stripe() as fake:
        yield fake


@pytest.fixture(scope="module")
def three(settings: Settings, stripe: FakeStripe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three stateless replicas, each with a billing reporter, behind the balancer (shared by the tests
    that leave them all running)."""
    with fleet(settings, tmp_path_factory.mktemp("three"), **billing_env(stripe)) as running:
        yield running


@asynccontextmanager
async def admin_at(url: str) -> AsyncIterator[Admin]:
    async with httpx.AsyncClient(base_url=url, headers=ADMIN_HEADERS, timeout=30) as http:
        yield Admin(http)


def fresh(url: str) -> httpx.AsyncClient:
    """A client that opens a new connection for every request: through the balancer, the next replica."""
    return httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


async def replica_of(http: httpx.AsyncClient) -> str:
    """The replica at the other end of `http`'s (kept-alive) connection."""
    return str((await http.get("/health", headers=OPS)).json()["process"]["replica"])


def result(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert "result" in body, body
    outcome: dict[str, Any] = body["result"]
    return outcome


async def give_customer(db: Database, stripe: FakeStripe, tenant: TenantHandle) -> str:
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    stripe.customers.add(customer)
    async with db.system() as conn:
        await conn.execute(
            text("UPDATE tenants SET stripe_customer_id = :c WHERE id = :t"), {"c": customer, "t": uuid.UUID(tenant.id)}
        )
    return customer


async def test_any_replica_serves_any_stateless_request(three: Fleet) -> None:
    async with admin_at(three.url) as admin:
        tenant = await admin.create_tenant(plan="pro")
    async with fresh(three.url) as http:
        written = result(await call(http, tenant, "data_put", {"key": "where", "value": {"n": 1}}))
        assert not written.get("isError"), written
    served: dict[str, Any] = {}
    for _ in range(6):  # twice round the three
        async with httpx.AsyncClient(base_url=three.url, timeout=30) as http:  # one connection, one replica
            replica = await replica_of(http)
            served[replica] = result(await call(http, tenant, "data_get", {"key": "where"}))["structuredContent"]
            listed = result(await mcp(http, tenant.headers, "tools/list"))
            assert "data_get" in {t["name"] for t in listed["tools"]}
    assert set(served) == three.ids
    assert all(answer["value"] == {"n": 1} for answer in served.values()), served


async def _tool_calls_counted(replica_url: str, outcome: str) -> float:
    async with httpx.AsyncClient(base_url=replica_url, timeout=30) as http:
        metrics = (await http.get("/metrics", headers=OPS)).text
    lines = [line for line in metrics.splitlines() if line.startswith("tenantry_tool_calls_total{")]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if 'tool="data_list"' in line and f'outcome="{outcome}"' in line
    )


async def test_a_quota_spread_over_three_replicas_admits_exactly_its_limit(three: Fleet) -> None:
    limit = 30
    async with admin_at(three.url) as admin:
        tenant = await admin.create_tenant(plan="pro")
        patched = await admin.http.patch(f"/api/tenants/{tenant.id}", json={"limits": {"calls_per_window": limit}})
        assert patched.status_code == 200, patched.text
    before = [await _tool_calls_counted(r.url, "ok") for r in three.replicas]
    async with fresh(three.url) as http:
        answers = [await bridge(http, tenant, "data_list", {}) for _ in range(3)]  # one on each, in turn
        answers += await asyncio.gather(*(bridge(http, tenant, "data_list", {}) for _ in range(3 * limit)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == limit, statuses
    assert {a.json()["error"] for a in answers if a.status_code != 200} == {"quota_exceeded"}
    admitted = [await _tool_calls_counted(r.url, "ok") - b for r, b in zip(three.replicas, before, strict=True)]
    assert sum(admitted) == limit
    assert all(n > 0 for n in admitted), admitted  # one quota, three replicas deciding


async def test_exactly_one_reporter_at_a_time_bills_each_successful_call_once(
    three: Fleet, stripe: FakeStripe, db: Database
) -> None:
    async with admin_at(three.url) as admin:
        tenant = await admin.create_tenant(plan="pro")
    customer = await give_customer(db, stripe, tenant)
    calls = 45
    async with fresh(three.url) as http:
        answers = await asyncio.gather(
            *(bridge(http, tenant, "data_put", {"key": f"k{n}", "value": n}) for n in range(calls)),
            *(bridge(http, tenant, "data_put", {"key": "no value"}) for _ in range(5)),  # refused: never billed
        )
    assert [a.status_code for a in answers] == [200] * calls + [400] * 5

    async def billed() -> bool:
        return stripe.billed(customer) >= calls

    await eventually(billed, within=30, what="every call billed")
    # Three reporters ran all along (every 0.3 s); the advisory lock let one report at a time, so no
    # report was sent twice (no failure was injected: one request per meter event) and no call twice.
    assert stripe.billed(customer) == calls == len([r for r in await ledger_rows(db, tenant) if r.outcome == "ok"])
    assert stripe.requests == len(stripe.events)


async def test_a_suspension_a_revoked_key_and_an_upstream_change_reach_every_replica_within_a_second(
    three: Fleet, fixture_upstream: Any
) -> None:
    _, upstream_url = fixture_upstream
    async with admin_at(three.url) as admin:
        suspended, revoked, changed = [await admin.create_tenant(plan="pro") for _ in range(3)]
        upstream = await admin.http.post(
            f"/api/tenants/{changed.id}/upstreams",
            json={"name": "fx", "url": upstream_url, "headers": {"Authorization": "Bearer alpha"}},
        )
        assert upstream.status_code == 201, upstream.text
        clients = [httpx.AsyncClient(base_url=r.url, timeout=30) for r in three.replicas]
        try:

            async def listed(http: httpx.AsyncClient, tenant: TenantHandle) -> set[str]:
                answer = await bridge(http, tenant, "listTools")
                return {t["name"] for t in answer.json()["tools"]} if answer.status_code == 200 else set()

            for http in clients:  # each replica has every credential and the upstream's tools in memory
                for tenant in (suspended, revoked):
                    assert (await bridge(http, tenant, "data_list", {})).status_code == 200
                assert "fx__echo" in await eventually(lambda http=http: listed(http, changed))

            async def on_every_replica(probe: Any, what: str) -> None:
                await asyncio.gather(*(eventually(lambda h=h: probe(h), within=1.0, what=what) for h in clients))

            made = await admin.http.patch(f"/api/tenants/{suspended.id}", json={"status": "suspended"})
            assert made.status_code == 200, made.text

            async def refused_as_suspended(http: httpx.AsyncClient) -> bool:
                return (await bridge(http, suspended, "data_list", {})).status_code == 403

            await on_every_replica(refused_as_suspended, "the suspension")

            gone = await admin.http.delete(f"/api/tenants/{revoked.id}/keys/{revoked.key_id}")
            assert gone.status_code in (200, 204), gone.text

            async def refused_as_revoked(http: httpx.AsyncClient) -> bool:
                return (await bridge(http, revoked, "data_list", {})).status_code == 401

            await on_every_replica(refused_as_revoked, "the revocation")

            removed = await admin.http.delete(f"/api/tenants/{changed.id}/upstreams/{upstream.json()['id']}")
            assert removed.status_code in (200, 204), removed.text

            async def upstream_gone(http: httpx.AsyncClient) -> bool:
                names = await listed(http, changed)
                return bool(names) and not any(n.startswith("fx__") for n in names)

            await on_every_replica(upstream_gone, "the upstream's removal")
        finally:
            for http in clients:
                await http.aclose()
