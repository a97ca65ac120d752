"""The built-in path stays free of round trips: no lookup touches upstreams, and "no upstreams" is cached."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tenantry.db.engine import Database
from tenantry.federation.discovery import Discovery
from tenantry.federation.pool import UpstreamPool
from tenantry.gateway.catalog import Catalog, builtin_tools
from tenantry.secrets import SecretBox
from tenantry.settings import DEV_SECRET_KEY, Settings
from tests.conftest import Admin, TenantHandle
from tests.upstream_servers import FixtureUpstream, serve_upstream


class CountingDatabase:
    """Delegates to the real database and counts tenant transactions."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.tenant_transactions = 0

    def tenant(self, tenant_id: uuid.UUID, **options: Any) -> Any:
        self.tenant_transactions += 1
        return self.db.tenant(tenant_id, **options)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_tenant_without_upstreams_is_read_once_per_ttl(
    settings: Settings, db: Database, tenant_a: TenantHandle
) -> None:
    counting = CountingDatabase(db)
    clock = Clock()
    pool = UpstreamPool(settings, SecretBox([DEV_SECRET_KEY]), clock=clock)
    discovery = Discovery(settings, counting, pool)  # type: ignore[arg-type]
    tid = uuid.UUID(tenant_a.id)
    for _ in range(5):
        view = await discovery.view(tid)
        assert view.definitions == []
    assert counting.tenant_transactions == 1
    clock.now += settings.upstream_discovery_ttl_seconds + 1
    await discovery.view(tid)
    assert counting.tenant_transactions == 2


async def test_builtin_lookups_never_ask_discovery(settings: Settings) -> None:
    class Refusing:
        async def view(self, tenant_id: uuid.UUID, *, fresh: bool = False) -> Any:
            raise AssertionError("a built-in lookup asked for the tenant's upstreams")

    catalog = Catalog(builtin_tools(settings), Refusing())  # type: ignore[arg-type]
    who: Any = type("P", (), {"tenant_id": uuid.uuid4()})()
    assert (await catalog.lookup(who, "data_get")) is not None
    assert (await catalog.lookup(who, "no_such_tool")) is None


async def test_upstream_tools_work_over_the_rest_bridge(
    http: httpx.AsyncClient, admin: Admin, tenant_a: TenantHandle
) -> None:
    upstream = FixtureUpstream()
    with serve_upstream(upstream) as (url, _):
        body = {"name": "fx", "url": url, "headers": {"Authorization": "Bearer alpha"}}
        assert (await admin.http.post(f"/api/tenants/{tenant_a.id}/upstreams", json=body)).status_code == 201
        bridge = f"/api/tenant/{tenant_a.id}/tool"
        listed = await http.post(bridge, json={"method": "listTools"}, headers=tenant_a.headers)
        called = await http.post(
            bridge, json={"method": "fx__echo", "params": {"text": "rest"}}, headers=tenant_a.headers
        )
    assert "fx__echo" in {t["name"] for t in listed.json()["tools"]}
    assert called.status_code == 200, called.text
    assert called.json()["content"][0]["text"] == "rest"


async def test_an_expired_view_is_served_while_it_refreshes_in_the_background(
    settings: Settings, db: Database, tenant_a: TenantHandle
) -> None:
    from tenantry.federation import registry

    box = SecretBox([DEV_SECRET_KEY])
    clock = Clock()
    discovery = Discovery(settings, db, UpstreamPool(settings, box, clock=clock))
    tid = uuid.UUID(tenant_a.id)
    upstream = FixtureUpstream()
    try:
        with serve_upstream(upstream) as (url, _):
            async with db.tenant(tid) as conn:
                await registry.create_upstream(
                    conn,
                    box,
                    tid,
                    name="fx",
                    url=url,
                    transport="streamable_http",
                    headers={"Authorization": "Bearer alpha"},
                    costs={},
                )
            first = await discovery.view(tid)
            assert "fx__echo" in {t.name for t in first.definitions}
            upstream.echo_description = "changed"
            clock.now += settings.upstream_discovery_ttl_seconds + 1
            stale = await discovery.view(tid)
            assert stale is first
            refresh = discovery._refreshing[tid]
            refreshed = await asyncio.wait_for(refresh, timeout=10)
            assert "fx__echo" not in {t.name for t in refreshed.definitions}
            assert refreshed.tools["fx__echo"].withheld
            assert await discovery.view(tid) is refreshed
    finally:
        await discovery.aclose()


async def test_past_its_bound_the_tool_positions_map_forgets_one_tenant_not_all(
    settings: Settings, monkeypatch: Any
) -> None:
    """With more tenants than the map holds, each new one pushes out the oldest alone: clearing the whole
    map (as it once did) made every tenant recompute its positions after each 10,000th newcomer."""
    import mcp_types as types
    from pydantic import BaseModel

    from tenantry.federation.offerings import TenantView
    from tenantry.gateway import catalog as catalog_module
    from tenantry.plans import Limits

    monkeypatch.setattr(catalog_module, "_MAX_POSITIONS", 2)
    entry = type("Entry", (), {"name": "fx__a", "cost": 1, "arguments": BaseModel, "withheld": False})()
    definition = types.Tool(name="fx__a", input_schema={"type": "object"})
    views = {t: TenantView(float("inf"), {"fx__a": entry}, [definition]) for t in (uuid.uuid4() for _ in range(3))}

    class Views:
        async def view(self, tenant_id: uuid.UUID, *, fresh: bool = False) -> TenantView:
            return views[tenant_id]

    catalog = Catalog(builtin_tools(settings), Views())  # type: ignore[arg-type]
    limits = Limits(max_tools=len(builtin_tools(settings)) + 1)
    for tenant_id in views:
        who: Any = type("P", (), {"tenant_id": tenant_id, "limits": limits})()
        assert await catalog.lookup(who, "fx__a") is entry  # within the cap
    assert list(catalog._positions) == list(views)[1:]
