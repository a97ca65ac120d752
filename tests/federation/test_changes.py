"""Changes to a tenant's upstreams reach every running gateway within a second or two, whoever makes them.

The discovery TTL here is the default 60 s, so anything seen within the
2 s these tests allow was announced by PostgreSQL (migration 0005) and
acted on by the gateway's listener (`federation/changes.py`), not aged out.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from sqlalchemy import text

from tenantry.app import create_app
from tenantry.client import connect
from tenantry.db.engine import Database
from tenantry.db.listener import APPLICATION_NAME, listener_dsn
from tenantry.federation import registry
from tenantry.federation.changes import CHANNEL, parse_payload
from tenantry.secrets import SecretBox
from tenantry.services import Services
from tenantry.settings import Settings
from tests.conftest import ADMIN_KEY, OPS, SOON, TEST_DB, Admin, TenantHandle, eventually, serve, serve_asgi
from tests.federation.test_cli import run as cli
from tests.upstream_servers import TOOLS_BY_TOKEN, FixtureUpstream, serve_upstream


async def names(client: Client) -> set[str]:
    return {t.name for t in (await client.list_tools()).tools}


@asynccontextmanager
async def admin_of(base_url: str) -> AsyncIterator[Admin]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
        yield Admin(http)


async def add_upstream(admin: Admin, tenant: TenantHandle, url: str, token: str, name: str = "fx") -> str:
    body = {"name": name, "url": url, "headers": {"Authorization": f"Bearer {token}"}}
    r = await admin.http.post(f"/api/tenants/{tenant.id}/upstreams", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@contextmanager
def gateway(settings: Settings) -> Iterator[tuple[str, Services]]:
    """Another replica: its own process state (caches, pool, listener) on the same database."""
    app = create_app(settings)
    with serve_asgi(app) as (url, _server):
        yield url, app.state.services


async def listener_state(http: httpx.AsyncClient) -> dict[str, Any]:
    check: dict[str, Any] = (await http.get("/health", headers=OPS)).json()["checks"]["upstream_changes"]
    return check


@pytest.fixture
async def listen(settings: Settings) -> AsyncIterator[asyncio.Queue[str]]:
    """The change channel, as a gateway hears it: every payload, in commit order."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(listener_dsn(settings.database_url))
    await conn.add_listener(CHANNEL, lambda _c, _pid, _channel, payload: heard.put_nowait(payload))
    try:
        yield heard
    finally:
        await conn.close()


def test_the_ttl_is_the_default_so_only_a_notification_can_explain_a_fast_change(settings: Settings) -> None:
    assert settings.upstream_discovery_ttl_seconds == 60


async def test_an_upstream_removed_with_the_cli_leaves_tools_list_within_two_seconds(
    gateway_url: str, settings: Settings, admin: Admin, tenant_a: TenantHandle, fixture_upstream: Any
) -> None:
    _, url = fixture_upstream
    upstream_id = await add_upstream(admin, tenant_a, url, "alpha")
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        assert "fx__echo" in await names(client)
        removed = await asyncio.to_thread(cli, settings, "upstream", "remove", "--tenant", tenant_a.id, upstream_id)
        assert removed.returncode == 0, removed.stderr

        async def gone() -> bool:
            return not any(n.startswith("fx__") for n in await names(client))

        await eventually(gone, what="the removed upstream leaving tools/list")
        with pytest.raises(MCPError, match="unknown tool"):
            await client.call_tool("fx__echo", {"text": "x"})


async def test_credentials_and_url_changed_in_the_database_are_used_on_the_next_call(
    gateway_url: str, settings: Settings, db: Database, admin: Admin, tenant_a: TenantHandle
) -> None:
    first, second = FixtureUpstream(), FixtureUpstream()
    with serve_upstream(first) as (first_url, _), serve_upstream(second) as (second_url, _):
        upstream_id = uuid.UUID(await add_upstream(admin, tenant_a, first_url, "beta"))
        tid = uuid.UUID(tenant_a.id)
        box = SecretBox(settings.secret_keys)
        async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
            assert not (await client.call_tool("fx__echo", {"text": "x"})).is_error
            assert first.received[-1]["authorization"] == "Bearer beta"

            # As the CLI and the service layer write it: a tenant-bound transaction, no gateway involved.
            async with db.tenant(tid) as conn:
                await registry.update_upstream(conn, box, upstream_id, headers={"Authorization": "Bearer alpha"})

            async def alpha_used() -> bool:
                echoed = await client.call_tool("fx__echo", {"text": "x"})
                return not echoed.is_error and first.received[-1]["authorization"] == "Bearer alpha"

            await eventually(alpha_used, what="the rotated credential")
            assert {f"fx__{t}" for t in TOOLS_BY_TOKEN["alpha"]} <= await names(client)

            async with db.tenant(tid) as conn:
                await registry.update_upstream(conn, box, upstream_id, url=second_url)

            async def second_used() -> bool:
                before = len(second.received)
                echoed = await client.call_tool("fx__echo", {"text": "x"})
                return not echoed.is_error and len(second.received) > before

            await eventually(second_used, what="the new URL")
            assert second.received[-1]["authorization"] == "Bearer alpha"
            calls_on_first = first.calls
            assert not (await client.call_tool("fx__echo", {"text": "x"})).is_error
            assert first.calls == calls_on_first


async def test_another_replica_sees_upstreams_added_and_removed_through_the_first_ones_api(
    gateway_url: str, settings: Settings, admin: Admin, tenant_a: TenantHandle, fixture_upstream: Any
) -> None:
    _, url = fixture_upstream
    with serve(settings) as other_url:
        async with connect(f"{other_url}/mcp", tenant_a.headers) as other:
            assert not any(n.startswith("fx__") for n in await names(other))  # cached: no upstreams
            upstream_id = await add_upstream(admin, tenant_a, url, "alpha")

            async def listed() -> bool:
                return "fx__echo" in await names(other)

            await eventually(listed, what="the added upstream on the other replica")
            assert not (await other.call_tool("fx__echo", {"text": "x"})).is_error

            deleted = await admin.http.delete(f"/api/tenants/{tenant_a.id}/upstreams/{upstream_id}")
            assert deleted.status_code == 200

            async def gone() -> bool:
                return not any(n.startswith("fx__") for n in await names(other))

            await eventually(gone, what="the removed upstream leaving the other replica")


async def test_a_tool_approved_on_one_replica_is_served_again_by_the_other(
    gateway_url: str, settings: Settings, admin: Admin, tenant_a: TenantHandle
) -> None:
    upstream = FixtureUpstream()
    with serve_upstream(upstream) as (url, _), serve(settings) as other_url:
        upstream_id = await add_upstream(admin, tenant_a, url, "alpha")
        base = f"/api/tenants/{tenant_a.id}/upstreams/{upstream_id}"
        async with admin_of(other_url) as other_admin, connect(f"{other_url}/mcp", tenant_a.headers) as other:
            assert "fx__echo" in await names(other)
            upstream.echo_description = "Echo the text, and mail it to someone."
            assert (await admin.http.post(f"{base}/refresh")).json()["drift"] == ["echo"]
            assert (await other_admin.http.post(f"{base}/refresh")).json()["drift"] == ["echo"]
            assert "fx__echo" not in await names(other)

            approved = await admin.http.post(f"{base}/tools/echo/approve")
            assert approved.status_code == 200, approved.text

            async def served() -> bool:
                return "fx__echo" in await names(other)

            await eventually(served, what="the approval on the other replica")
            assert not (await other.call_tool("fx__echo", {"text": "x"})).is_error


async def test_offboarding_a_tenant_closes_its_upstream_sessions_on_every_replica(
    gateway_url: str, settings: Settings, admin: Admin, fixture_upstream: Any
) -> None:
    _, url = fixture_upstream
    tenant = await admin.create_tenant()
    await add_upstream(admin, tenant, url, "alpha")
    with gateway(settings) as (other_url, other):
        async with connect(f"{other_url}/mcp", tenant.headers) as client:
            assert not (await client.call_tool("fx__echo", {"text": "x"})).is_error
        pool = other.discovery.pool
        assert pool.open_sessions() == 1  # this replica serves no other tenant

        assert (await admin.http.delete(f"/api/tenants/{tenant.id}")).status_code == 200

        async def closed() -> bool:
            return pool.open_sessions() == 0

        await eventually(closed, what="the offboarded tenant's session closing")


async def test_a_rolled_back_change_notifies_nobody(
    settings: Settings, db: Database, admin: Admin, tenant_a: TenantHandle, listen: asyncio.Queue[str]
) -> None:
    kept = uuid.UUID(await add_upstream(admin, tenant_a, "http://127.0.0.1:9/mcp", "alpha", name="kept"))
    dropped = uuid.UUID(await add_upstream(admin, tenant_a, "http://127.0.0.1:9/mcp", "alpha", name="dropped"))
    tid = uuid.UUID(tenant_a.id)
    assert await asyncio.wait_for(listen.get(), SOON) == f"{tid}:{kept}"
    assert await asyncio.wait_for(listen.get(), SOON) == f"{tid}:{dropped}"

    class Abandon(Exception):
        pass

    async def delete_then_fail() -> None:
        async with db.tenant(tid) as conn:
            await registry.delete_upstream(conn, dropped)
            raise Abandon

    with pytest.raises(Abandon):
        await delete_then_fail()
    async with db.tenant(tid) as conn:
        await registry.update_upstream(conn, SecretBox(settings.secret_keys), kept, costs={"echo": 2})

    # Notifications arrive in commit order: had the rollback announced anything, it would come first.
    assert await asyncio.wait_for(listen.get(), SOON) == f"{tid}:{kept}"
    assert listen.empty()
    async with db.tenant(tid) as conn:
        assert {u.id for u in await registry.list_upstreams(conn)} == {kept, dropped}


async def test_the_listener_recovers_from_a_killed_connection_and_forgets_what_it_may_have_missed(
    settings: Settings, db: Database, admin: Admin, tenant_a: TenantHandle, fixture_upstream: Any
) -> None:
    _, url = fixture_upstream
    upstream_id = await add_upstream(admin, tenant_a, url, "alpha")
    with serve(settings) as other_url:
        async with httpx.AsyncClient(base_url=other_url, timeout=30) as http:

            async def listening() -> dict[str, Any] | None:
                state = await listener_state(http)
                return state if state["listening"] else None

            before = await eventually(listening, what="the listener connecting")
            async with connect(f"{other_url}/mcp", tenant_a.headers) as client:
                assert "fx__echo" in await names(client)

                # A change nobody is told about (triggers do not fire for a replica session): what a
                # listener would miss while its connection is down.
                async with db.system() as conn:
                    await conn.execute(text("SET LOCAL session_replication_role = replica"))
                    await conn.execute(text("DELETE FROM upstreams WHERE id = :id"), {"id": upstream_id})
                assert "fx__echo" in await names(client)  # still cached: nothing said otherwise

                async with db.system() as conn:
                    killed = (
                        await conn.execute(
                            text(
                                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE application_name = :name AND datname = :db"
                            ),
                            {"name": APPLICATION_NAME, "db": TEST_DB},
                        )
                    ).scalar_one()
                assert killed >= 1

                async def reconnected() -> dict[str, Any] | None:
                    state = await listener_state(http)
                    return state if state["listening"] and state["connects"] > before["connects"] else None

                await eventually(reconnected, within=5.0, what="the listener reconnecting")
                assert not any(n.startswith("fx__") for n in await names(client))


async def test_a_payload_that_does_not_parse_is_ignored_and_listening_goes_on(
    gateway_url: str, http: httpx.AsyncClient, db: Database, admin: Admin, tenant_a: TenantHandle, fixture_upstream: Any
) -> None:
    _, url = fixture_upstream

    async def listening() -> dict[str, Any] | None:
        state = await listener_state(http)
        return state if state["listening"] else None

    before = await eventually(listening, what="the listener connecting")
    async with db.system() as conn:
        for payload in ("not-a-tenant:nor-an-upstream", "no separator"):
            await conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})

    async def ignored() -> dict[str, Any] | None:
        state = await listener_state(http)
        return state if state["ignored"] >= before["ignored"] + 2 else None

    state = await eventually(ignored, what="the bad payloads being counted")
    assert state["listening"]
    assert state["connects"] == before["connects"]
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        assert not any(n.startswith("fx__") for n in await names(client))
        await add_upstream(admin, tenant_a, url, "alpha")

        async def listed() -> bool:
            return "fx__echo" in await names(client)

        await eventually(listed, what="a valid change after the bad ones")


@pytest.mark.parametrize(
    "payload", ["", "garbage", f"{uuid.uuid4()}", f"{uuid.uuid4()}:", f"nope:{uuid.uuid4()}", f"{uuid.uuid4()}:x"]
)
def test_payloads_other_than_tenant_and_upstream_ids_do_not_parse(payload: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - uuid.UUID raises a plain ValueError
        parse_payload(payload)


def test_payloads_name_one_upstream_or_all_of_a_tenants() -> None:
    tid, uid = uuid.uuid4(), uuid.uuid4()
    assert parse_payload(f"{tid}:{uid}").upstream_id == uid
    assert parse_payload(f"{tid}:*").upstream_id is None
    assert parse_payload(f"{tid}:*").tenant_id == tid
