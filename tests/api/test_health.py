"""Ops: /health (public: a summary), its detail, /health?tenant= and /metrics (the ops credential)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import text

import tenantry
from tenantry.app import create_app
from tenantry.client import connect
from tenantry.db.engine import Database
from tenantry.db.ledger_schema import AUDIT_SIGNATURE, USAGE_SIGNATURE
from tests.conftest import ADMIN_KEY, OPS, Admin, TenantHandle, eventually, serve
from tests.federation.test_upstreams import add_upstream

CHECKS = {"database", "redis", "app_role", "ledger", "upstream_changes", "audit", "tls"}


async def test_health_is_ok_and_names_each_check(http: httpx.AsyncClient, db: Database) -> None:
    r = await http.get("/health", headers=OPS)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == CHECKS
    assert body["checks"]["app_role"]["rows_visible_without_tenant"] == 0
    assert body["checks"]["app_role"]["ledger_roles"] == {f"{db.app_role}_ledger": {"bypass_rls": False}}
    assert body["checks"]["audit"] == {"status": "ok", "enabled": True, "lost_records": 0}
    assert "checked_out" in body["checks"]["database"]["pool"]
    process = body["process"]
    assert process["version"] == tenantry.__version__
    assert process["uptime_seconds"] >= 0
    assert process["memory_rss_bytes"] > 10_000_000  # a Python process with this much imported
    assert process["active_tenants"] >= 0


@asynccontextmanager
async def ledger_owned_by_a_superuser(db: Database) -> AsyncIterator[str]:
    """The ledger's functions handed to the owner (a superuser in tests: re-made by hand, say), whose RLS
    they would then run without; handed back after."""
    signatures = (USAGE_SIGNATURE, AUDIT_SIGNATURE)
    async with db.system() as conn:
        owner = str((await conn.execute(text("SELECT current_user"))).scalar_one())
        for signature in signatures:
            await conn.execute(text(f"ALTER FUNCTION {signature} OWNER TO {owner}"))
    try:
        yield owner
    finally:
        async with db.system() as conn:
            for signature in signatures:
                await conn.execute(text(f"ALTER FUNCTION {signature} OWNER TO {db.app_role}_ledger"))


async def test_health_fails_when_the_drains_batch_writer_would_run_as_a_role_that_bypasses_rls(
    http: httpx.AsyncClient, db: Database
) -> None:
    """The ledger's functions run as their owner: one that bypasses RLS would store every tenant's rows
    with RLS off. /health's app_role check names that owner and fails."""
    async with ledger_owned_by_a_superuser(db) as owner:

        async def failing() -> dict[str, Any] | None:
            check: dict[str, Any] = (await http.get("/health", headers=OPS)).json()["checks"]["app_role"]
            return check if check["status"] == "fail" else None

        check = await eventually(failing, what="the app_role check failing")
        assert check["ledger_roles"] == {owner: {"bypass_rls": True}}
        assert check["bypass_rls"] is False  # the application role itself is still fine
    assert (await http.get("/health", headers=OPS)).json()["checks"]["app_role"]["status"] == "ok"


async def test_the_gateway_refuses_to_start_when_its_ledger_would_bypass_rls(settings: Any, db: Database) -> None:
    app = create_app(settings)
    services = app.state.services
    try:
        async with ledger_owned_by_a_superuser(db) as owner:
            with pytest.raises(RuntimeError, match=f"ledger role '{owner}' bypasses row-level security"):
                async with app.router.lifespan_context(app):
                    pass
    finally:
        await services.aclose_redis()
        await services.db.dispose()


async def test_public_health_says_only_ok_or_degraded_per_check(
    http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    r = await http.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {name: {"status": "ok"} for name in CHECKS}}
    assert tenant_a.id not in r.text


@pytest.mark.parametrize("credential", [None, "tenant key", "not a credential"])
async def test_tenant_health_and_metrics_refuse_anyone_without_the_ops_credential(
    http: httpx.AsyncClient, admin: Admin, tenant_a: TenantHandle, fixture_upstream: Any, credential: str | None
) -> None:
    upstream, url = fixture_upstream
    await add_upstream(admin, tenant_a, url, "alpha")
    headers = {}
    if credential == "tenant key":
        headers = {"Authorization": f"Bearer {tenant_a.key}"}
    elif credential is not None:
        headers = {"Authorization": "Bearer tnt_guess"}
    seen = len(upstream.received)
    for target in (tenant_a.id, str(uuid.uuid4())):  # a tenant that exists and one that does not: same answer
        r = await http.get("/health", params={"tenant": target}, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"] in ("missing_credentials", "invalid_credentials")
        assert tenant_a.id not in r.text or (target == tenant_a.id and "tenant_not_found" not in r.text)
    metrics = await http.get("/metrics", headers=headers)
    assert metrics.status_code == 401
    assert len(upstream.received) == seen  # no stranger made the gateway contact the tenant's upstream


async def test_the_ops_and_admin_credentials_open_the_ops_endpoints_and_the_ops_key_nothing_else(
    http: httpx.AsyncClient, tenant_a: TenantHandle
) -> None:
    for headers in (OPS, {"Authorization": f"Bearer {ADMIN_KEY}"}):
        assert (await http.get("/metrics", headers=headers)).status_code == 200
        assert (await http.get("/health", params={"tenant": tenant_a.id}, headers=headers)).status_code == 200
    assert (await http.get("/api/tenants", headers=OPS)).status_code == 401
    assert (await http.post("/api/tenants", headers=OPS, json={"name": "x"})).status_code == 401


async def test_tenant_health_runs_the_rls_canary(
    gateway_url: str, http: httpx.AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        await client.call_tool("data_put", {"key": "one", "value": 1})
        await client.call_tool("data_put", {"key": "two", "value": 2})
    async with connect(f"{gateway_url}/mcp", tenant_b.headers) as client:
        await client.call_tool("data_put", {"key": "b", "value": 1})
    r = await http.get("/health", params={"tenant": tenant_a.id}, headers=OPS)
    assert r.status_code == 200
    canary = r.json()["checks"]["rls_canary"]
    assert canary == {"status": "ok", "tier": "shared", "own_rows": 2, "expected_rows": 2, "foreign_rows_visible": 0}
    assert r.json()["tenant"]["id"] == tenant_a.id
    quota = r.json()["checks"]["quota"]
    assert (quota["limit"], quota["used"], quota["remaining"]) == (100, 2, 98)  # the free plan, two calls


async def test_tenant_health_rejects_bad_and_unknown_ids(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health", params={"tenant": "nope"}, headers=OPS)).status_code == 400
    missing = await http.get("/health", params={"tenant": str(uuid.uuid4())}, headers=OPS)
    assert missing.status_code == 404
    assert missing.json()["error"] == "tenant_not_found"


async def test_health_is_503_and_names_redis_when_redis_is_unreachable(settings: Any) -> None:
    from tests.conftest import free_port

    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with serve(dead) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            public = await client.get("/health")
            r = await client.get("/health", headers=OPS)
    assert public.status_code == 503
    assert public.json()["checks"]["redis"] == {"status": "fail"}  # no error text for strangers
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["status"] == "fail"
    assert body["checks"]["database"]["status"] == "ok"


class PostgresLink:
    """A TCP forwarder to the test PostgreSQL, on its own loop in a thread (the gateway's startup waits on
    the test's thread), that can be cut (listener closed, every connection aborted) and restored."""

    def __init__(self) -> None:
        from tests.conftest import free_port

        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pg-link", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5432)
        self._open |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in self._open:
            writer.transport.abort()
        self._open.clear()

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=5)

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def stop(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


async def test_liveness_stays_ok_while_postgresql_is_cut_off_and_readiness_recovers(settings: Any) -> None:
    """What the Helm chart's probes rely on: while PostgreSQL is unreachable, `/health` (readiness) is 503
    and `/health/live` (liveness) stays 200, so Kubernetes stops routing to a replica without restarting
    it; when PostgreSQL is back, `/health` is 200 again in the same process."""
    link = PostgresLink()
    link.start()
    through_link = settings.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{link.port}")
    assert through_link != settings.database_url
    try:
        with serve(settings.model_copy(update={"database_url": through_link})) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/health")).status_code == 200
                link.cut()
                ready = await client.get("/health")
                live = await client.get("/health/live")
                assert ready.status_code == 503
                assert ready.json()["checks"]["database"] == {"status": "fail"}
                assert live.status_code == 200
                assert live.json() == {"status": "alive"}
                link.restore()

                async def ready_again() -> bool:
                    return (await client.get("/health")).status_code == 200

                await eventually(ready_again, within=10, what="/health answering 200 after PostgreSQL came back")
    finally:
        link.stop()


async def test_metrics_count_tool_calls_per_tool_and_outcome_without_naming_tenants(
    gateway_url: str, http: httpx.AsyncClient, admin: Admin, tenant_a: TenantHandle, fixture_upstream: Any
) -> None:
    _, url = fixture_upstream
    await add_upstream(admin, tenant_a, url, "alpha")
    before = _count((await http.get("/metrics", headers=OPS)).text, 'outcome="key_not_found",tool="data_get"')
    async with connect(f"{gateway_url}/mcp", tenant_a.headers) as client:
        await client.call_tool("data_get", {"key": "missing"})
        await client.call_tool("fx__echo", {"text": "hi"})
    text = (await http.get("/metrics", headers=OPS)).text
    assert _count(text, 'outcome="key_not_found",tool="data_get"') == before + 1
    assert _count(text, 'outcome="ok",tool="_upstream"') >= 1  # upstream tool names are not labels
    assert "tenantry_tool_call_seconds_bucket" in text
    assert tenant_a.id not in text


async def test_per_tenant_metric_labels_are_opt_in_and_bounded(settings: Any) -> None:
    with serve(settings.model_copy(update={"metrics_tenant_labels": 1})) as url:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            first, second = await Admin(http).create_tenant(), await Admin(http).create_tenant()
            for tenant in (first, second):
                async with connect(f"{url}/mcp", tenant.headers) as client:
                    await client.call_tool("data_get", {"key": "missing"})
            text = (await http.get("/metrics")).text
    assert _count(text, f'outcome="key_not_found",tenant="{first.id}",tool="data_get"') == 1
    assert _count(text, 'outcome="key_not_found",tenant="_other",tool="data_get"') == 1
    assert second.id not in text


def _count(metrics: str, labels: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f"tenantry_tool_calls_total{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_health_counts_ledger_entries_set_aside_without_failing(settings: Any) -> None:
    from redis.asyncio import Redis

    from tenantry.metering.drain import dead_letter_key
    from tenantry.metering.ledger import stream_key

    prefix = f"health-{uuid.uuid4().hex[:8]}"
    dead = dead_letter_key(stream_key(prefix))
    redis = Redis.from_url(settings.redis_url)
    try:
        await redis.xadd(dead, {"junk": "x", "reason": "not a usage event"})
        with serve(settings.model_copy(update={"redis_key_prefix": prefix})) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                r = await client.get("/health", headers=OPS)
    finally:
        await redis.delete(dead)
        await redis.aclose()
    assert r.status_code == 200  # no replica can fix such an entry by retrying: ops inspects it
    assert r.json()["checks"]["ledger"]["dead_letters"] == 1
