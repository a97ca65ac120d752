"""Shared fixtures: a real PostgreSQL database and Redis, and the gateway served on loopback.

The database `tenantry_test` is dropped and migrated afresh once per run.
Tests do not clean up after themselves: each makes its own tenants, so
isolation between tests is the very property under test.

The gateway runs in a uvicorn server on its own thread and event loop, as
it would in production; tests reach it only over HTTP, with the official
MCP client or plain HTTP clients.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import uvicorn

from tenantry.app import create_app
from tenantry.db.engine import Database
from tenantry.db.migrate import migrate
from tenantry.dev import ensure_postgres, ensure_redis
from tenantry.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
# One database per run, so concurrent runs (a developer and a helper, say) never collide.
TEST_DB = f"tenantry_test_{os.getpid()}"
ADMIN_KEY = "test-admin-key-0123456789abcdef"
OPS_KEY = "test-ops-key-0123456789abcdef"
# The ops credential: /metrics, /health?tenant= and the detail of /health.
OPS = {"Authorization": f"Bearer {OPS_KEY}"}
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"


T = TypeVar("T")
# How long a change made elsewhere may take to reach a replica (the listener's promise is about a second).
SOON = 2.0


async def eventually(probe: Callable[[], Awaitable[T]], *, within: float = SOON, what: str = "the change") -> T:
    """Poll `probe` until it returns something truthy, for at most `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await probe()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{what} was not seen within {within}s (last: {result!r})")
        await asyncio.sleep(0.05)


def test_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": f"{SERVER}/{TEST_DB}",
        "redis_url": "redis://127.0.0.1:6379/0",
        "admin_api_key": ADMIN_KEY,
        "ops_api_key": OPS_KEY,
        "jwt_secret": JWT_SECRET,
        "db_pool_size": 5,
        "db_max_overflow": 5,
        # Redis is shared with other runs (a developer's, a helper's): keep this run's keys apart.
        "redis_key_prefix": f"tenantry-test-{os.getpid()}",
        # Upstream fixture servers run on loopback.
        "upstream_allow_loopback": True,
        # Every plan on the shared tier unless a test picks a tier (tests/db/test_tiers.py and others do).
        "plan_tiers": {},
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def recreate_database(name: str, *, create: bool = True) -> None:
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        # Database-tier tenants' databases are named after it (`db/router.py`): they go with it.
        tenant_databases = await conn.fetch(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", f"{name}_t_"
        )
        for row in tenant_databases:
            await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Run every `async def` test under anyio without marking each one by hand."""
    if collector.funcnamefilter(name) and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)


@pytest.fixture(scope="session")
def services_up() -> None:
    state = ROOT / ".tenantry"
    ensure_postgres(f"{SERVER}/postgres", state)
    ensure_redis("redis://127.0.0.1:6379/0", state)


@pytest.fixture(scope="session")
def settings(services_up: None) -> Iterator[Settings]:
    s = test_settings()

    async def prepare() -> None:
        await recreate_database(TEST_DB)
        await migrate(s.database_url, app_role=s.db_app_role)

    asyncio.run(prepare())
    yield s
    asyncio.run(recreate_database(TEST_DB, create=False))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_asgi(app: Any, port: int | None = None, **options: Any) -> Iterator[tuple[str, uvicorn.Server]]:
    """Serve any ASGI app with uvicorn on a loopback port in a thread; yield its base URL and server.
    `options` go to `uvicorn.Config` (`ssl_certfile=...`: served over HTTPS)."""
    # A bounded graceful shutdown: a client holding a stream open (an upstream link's standalone
    # GET, say) must not keep the server, and the test, waiting for the join timeout.
    config = uvicorn.Config(app, host="127.0.0.1", port=port or free_port(), **{**SERVER_OPTIONS, **options})
    with serve_config(config) as served:
        yield served


# How tests run uvicorn: quiet, with the app's lifespan, and a bounded graceful shutdown.
SERVER_OPTIONS: dict[str, Any] = {
    "log_level": "warning",
    "lifespan": "on",
    "access_log": False,
    "timeout_graceful_shutdown": 2,
}


@contextmanager
def serve_config(config: uvicorn.Config) -> Iterator[tuple[str, uvicorn.Server]]:
    """Run uvicorn with `config` in a thread; yield its base URL (https when it terminates TLS) and server."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"asgi-{config.port}", daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            if not thread.is_alive():
                raise RuntimeError("server thread died during startup")
            threading.Event().wait(0.01)
        else:
            raise RuntimeError("server did not start within 5 s")
        yield f"{'https' if config.is_ssl else 'http'}://{config.host}:{config.port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Run the gateway for `settings` on a loopback port in a thread; yield its base URL."""
    with serve_asgi(create_app(settings)) as (url, _server):
        yield url


@pytest.fixture(scope="session")
def gateway_url(settings: Settings) -> Iterator[str]:
    with serve(settings) as url:
        yield url


@dataclass
class TenantHandle:
    id: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Tenant-ID": self.id, "Authorization": f"Bearer {self.key}"}


class Admin:
    """The admin REST API, as an operator would use it."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.http = client

    async def create_tenant(self, name: str | None = None, plan: str = "free") -> TenantHandle:
        r = await self.http.post("/api/tenants", json={"name": name or f"t-{uuid.uuid4().hex[:8]}", "plan": plan})
        assert r.status_code == 201, r.text
        tenant_id = r.json()["id"]
        k = await self.http.post(f"/api/tenants/{tenant_id}/keys", json={"name": "test"})
        assert k.status_code == 201, k.text
        return TenantHandle(id=tenant_id, key=k.json()["secret"], key_id=k.json()["id"])


@pytest.fixture
async def http(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
async def admin(gateway_url: str) -> AsyncIterator[Admin]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=gateway_url, headers=headers, timeout=30) as client:
        yield Admin(client)


@pytest.fixture
async def tenant_a(admin: Admin) -> TenantHandle:
    return await admin.create_tenant("tenant-a")


@pytest.fixture
async def tenant_b(admin: Admin) -> TenantHandle:
    return await admin.create_tenant("tenant-b")


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """Direct database access from the test's own event loop (owner and app role pools)."""
    database = Database(settings)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture(scope="module")
def fixture_upstream() -> Iterator[tuple[Any, str]]:
    """A real SDK upstream MCP server on loopback (`tests.upstream_servers.FixtureUpstream`), one per test module."""
    from tests.upstream_servers import FixtureUpstream, serve_upstream

    upstream = FixtureUpstream()
    with serve_upstream(upstream) as (url, _server):
        yield upstream, url
