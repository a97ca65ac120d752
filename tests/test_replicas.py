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
        float(line.rsplit(" ", 1)[1]) for line in lines if 'tool="data_list"' in line and f'outcome="{outcome}"' in line
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
    # Counted for this customer: the replicas also report other tests' tenants in the shared database
    # (refused by this fake, which does not know their customers).
    reported = [e for e in stripe.events.values() if e["customer"] == customer]
    assert stripe.requests_by_customer[customer] == len(reported)


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


@pytest.fixture
def doomed(settings: Settings, stripe: FakeStripe, tmp_path: Path) -> Iterator[Fleet]:
    """Three replicas of the test's own, one of which it kills."""
    with fleet(settings, tmp_path, **billing_env(stripe)) as running:
        yield running


async def test_a_sigkilled_replica_under_load_loses_no_billed_call_and_bills_none_twice(
    doomed: Fleet, stripe: FakeStripe, db: Database
) -> None:
    async with admin_at(doomed.url) as admin:
        tenant = await admin.create_tenant(plan="pro")
    customer = await give_customer(db, stripe, tenant)
    workers, kill_after, stop_after = 9, 120, 300
    returned: list[str] = []
    lost = 0  # calls whose answer never came back (the connection died with the replica)
    killed = asyncio.Event()

    async def worker(i: int) -> None:
        nonlocal lost
        n = 0
        while len(returned) < stop_after:
            n += 1
            try:  # a kept-alive connection: three workers per replica, until theirs dies
                async with httpx.AsyncClient(base_url=doomed.url, timeout=10) as http:
                    while len(returned) < stop_after:
                        n += 1
                        r = await bridge(http, tenant, "data_put", {"key": f"w{i}-{n}", "value": n})
                        assert r.status_code == 200, r.text
                        returned.append(r.json()["_meta"]["tenantry/event_id"])
            except httpx.TransportError:
                lost += 1
                assert killed.is_set()  # only the killed replica's connections fail

    tasks = [asyncio.create_task(worker(i)) for i in range(workers)]

    async def enough() -> bool:
        return len(returned) >= kill_after

    await eventually(enough, within=60, what=f"{kill_after} answers")
    killed.set()
    doomed.kill(doomed.replicas[1])
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)

    async def billed_as_recorded() -> list[Any] | None:
        """The ledger, once it holds every returned call and Stripe bills exactly what it holds."""
        rows = await ledger_rows(db, tenant)
        complete = {str(r.event_id) for r in rows} >= set(returned)
        return rows if complete and stripe.billed(customer) == len(rows) else None

    rows = await eventually(billed_as_recorded, within=30, what="every call recorded and billed")
    assert len(rows) == len({r.event_id for r in rows})  # none recorded twice
    # Every returned call is billed once; at most the calls in flight on the killed replica ran unanswered.
    assert len(returned) == len(set(returned)) <= len(rows) <= len(returned) + lost
    assert all(r.outcome == "ok" for r in rows)
    assert 0 < lost <= workers


@pytest.fixture
def stateful(settings: Settings, tmp_path: Path) -> Iterator[Fleet]:
    with fleet(settings, tmp_path, TENANTRY_MCP_STATEFUL="true") as running:
        yield running


VERSION = "2025-06-18"


async def open_session(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    params = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}
    opened = await mcp(http, headers, "initialize", params)
    assert opened.status_code == 200, opened.text
    session = {**headers, "Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": VERSION}
    done = await http.post(
        "/mcp",
        headers={**session, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
    )
    assert done.status_code == 202, done.text
    return session


async def test_a_stateful_session_is_served_through_any_replica_and_ends_with_its_replica(
    stateful: Fleet, db: Database
) -> None:
    async with admin_at(stateful.url) as admin:
        tenant = await admin.create_tenant(plan="pro")
        other_key = (await admin.http.post(f"/api/tenants/{tenant.id}/keys", json={"name": "other"})).json()["secret"]
    async with fresh(stateful.url) as http:
        session = await open_session(http, tenant.headers)
        owner_id = session["Mcp-Session-Id"].split("-", 1)[0]
        assert owner_id in stateful.ids  # the id names the replica that owns the session
        owner = next(r for r in stateful.replicas if r.id == owner_id)
        for n in range(6):  # through the balancer: each request on the next replica, all on the one session
            put = result(
                await mcp(http, session, "tools/call", {"name": "data_put", "arguments": {"key": "n", "value": n}})
            )
            assert not put.get("isError"), put
    for replica in stateful.replicas:  # and straight to each: the others forward to the owner
        async with httpx.AsyncClient(base_url=replica.url, timeout=30) as direct:
            got = result(await mcp(direct, session, "tools/call", {"name": "data_get", "arguments": {"key": "n"}}))
            assert got["structuredContent"]["value"] == 5
            # Forwarding grants nothing: the owner still refuses the session to another credential.
            borrowed = {**session, "Authorization": f"Bearer {other_key}"}
            assert (await mcp(direct, borrowed, "tools/list")).status_code == 404
            # The session's standalone SSE stream, opened through any replica, streams from the owner.
            async with direct.stream("GET", "/mcp", headers={**session, "Accept": "text/event-stream"}) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
            # A session id naming no live replica, or not minted here at all, is an unknown session.
            for made_up in (f"{'ab' * 6}-{'0' * 32}", uuid.uuid4().hex):
                unknown = await mcp(direct, {**session, "Mcp-Session-Id": made_up}, "tools/list")
                assert unknown.status_code == 404, unknown.text

    # A forwarded request is one request: one id in both replicas' answers and logs, one audit record.
    elsewhere = next(r for r in stateful.replicas if r is not owner)
    ids = [uuid.uuid4().hex, uuid.uuid4().hex]
    async with httpx.AsyncClient(base_url=elsewhere.url, timeout=30) as direct:
        for request_id in ids:
            listed = await mcp(direct, {**session, "X-Request-ID": request_id}, "tools/list")
            assert listed.status_code == 200, listed.text
            assert listed.headers.get_list("x-request-id") == [request_id]

    async def audited(request_id: str) -> int:
        async with db.system_data(uuid.UUID(tenant.id)) as conn:  # its trail, wherever its tier keeps it
            found = await conn.execute(
                text("SELECT count(*) FROM audit_records WHERE request_id = :r"), {"r": request_id}
            )
            return int(found.scalar_one())

    await eventually(lambda: audited(ids[1]), what="the second request's audit record")
    assert await audited(ids[0]) == 1  # the owner wrote it; the replica that forwarded it wrote none

    stateful.kill(owner)
    for replica in stateful.replicas:
        if replica is owner:
            continue
        async with httpx.AsyncClient(base_url=replica.url, timeout=30) as direct:
            ended = await mcp(direct, session, "tools/list")
            # The MCP specification's answer for a session the server does not know: 404, so the client
            # opens a new one.
            assert ended.status_code == 404, ended.text
            assert ended.json()["error"]["message"] == "Session not found"
    async with fresh(stateful.url) as http:  # a new session, on a live replica, works
        again = await open_session(http, tenant.headers)
        assert again["Mcp-Session-Id"].split("-", 1)[0] in stateful.ids - {owner_id}
        assert (await mcp(http, again, "tools/list")).status_code == 200
