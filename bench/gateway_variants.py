"""Ablations of the gateway, for `bench_gateway.py --variants ...`: each removes one layer of the tools/call path.

Each factory builds the real app (or the real services) and then swaps one piece for a stub, without
touching `src/`. Served and driven exactly like the gateway (same headers, same tool, same value), so
`gateway CPU/req - variant CPU/req` is what that layer costs per call:

- `no_metering` no meter round trip (Lua quota/rate/in-flight) and no usage event (Redis stream): what
               metering plus the ledger cost per call (`TENANTRY_METERING_ENABLED=false`)
- `no_ledger`  the meter's round trip, but no usage event (record is a no-op, so no second round trip and
               nothing to drain): splits `no_metering`'s cost between the meter and the ledger
- `redis_py`   metering on, but its hot commands (admit EVALSHA, ledger XADD + ZREM) on redis-py instead of
               the lean RESP client (`TENANTRY_REDIS_LEAN_CLIENT=false`): what the lean client saves per call
- `no_db`      data_get answers a fixed result instead of the 4-round-trip RLS transaction
- `no_auth`    TenantAuth (header parsing, key hashing, cache lookup, AuthenticatedUser) -> a stub that puts
               a fixed Principal in the scope
- `no_metrics` the Prometheus counter + histogram per call -> nothing
- `starlette`  the /mcp route on a bare Starlette app: no observer, no BodyLimit (POST /mcp already skips
               FastAPI's own layers: `api/edge.py`)
- `lean`       all four at once; what is left over bare is Gateway._call_tool + ToolCalls (validation, outcome)

and two that add, to see what production logging and governance cost:

- `access_log`  the gateway with `tenantry serve`'s logging: one JSON access line per request at INFO
                (the plain gateway here logs nothing: uvicorn's `--log-level warning` filters the line out)
- `policy100`   every tenant under a 100-rule policy (`bench_policy.py`'s: the matching rule last, and an
                argument rule on data_get): decide and shape on every call
- `guardrail`   every tenant's tool output passed through the personal-data guardrail (redact)

and one that removes what governance adds to every call:

- `no_audit`    no audit trail (`TENANTRY_AUDIT_ENABLED=false`): gateway minus no_audit is what the trail
                costs per call (its record, the argument digest, its bytes in the ledger entry and the drain)

and two candidate improvements, to see what they would buy:

- `asyncpg_get`   data_get on a plain asyncpg pool (same RLS transaction, BEGIN and the tenant binding sent as
                  one simple query: 3 round trips instead of 4, and no SQLAlchemy/greenlet layer)
- `schema_lookup` `Server.get_tool_input_schema` set from the catalog, so the 2026-07-28 path stops running
                  the whole tools/list handler on every tools/call to validate `Mcp-Param-*` headers

These poke at private attributes (`_catalog`, `_builtins`): they are benchmark scaffolding, not API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantry.app import build_services, create_app
from tenantry.auth.middleware import PRINCIPAL_SCOPE_KEY, TenantAuth
from tenantry.plans import PlanBook
from tenantry.services import Services
from tenantry.settings import Settings
from tenantry.tenancy import Principal, bind_principal
from tenantry.tools.base import ToolContext

FIXED_UPDATED_AT = "2025-01-01T00:00:00.000000+00:00"
_stored: dict[str, Any] = {}
_UNREFUSED = {"calls_per_window": 10**9, "requests_per_minute": 10**9, "max_concurrent": 10_000}


async def _fixed_data_get(ctx: ToolContext, args: Any) -> dict[str, Any]:
    """data_get without the database: the value the benchmark stored (captured at data_put time)."""
    value = _stored.get(args.key)
    return {"key": args.key, "value": value, "size_bytes": len(str(value)), "updated_at": FIXED_UPDATED_AT}


async def _fixed_data_put(ctx: ToolContext, args: Any) -> dict[str, Any]:
    _stored[args.key] = args.value
    return {"key": args.key, "created": True, "size_bytes": 0, "updated_at": FIXED_UPDATED_AT}


class _StubAuth:
    """TenantAuth minus everything: trust Tenant-ID, bind a Principal built once per tenant."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._principals: dict[bytes, tuple[Principal, AuthenticatedUser]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        claimed = next((v for k, v in scope["headers"] if k == b"tenant-id"), b"")
        known = self._principals.get(claimed)
        if known is None:
            tenant = uuid.UUID(claimed.decode())
            limits = PlanBook(Settings()).limits("pro", _UNREFUSED)
            principal = Principal(tenant_id=tenant, key_id=uuid.uuid4(), plan="pro", via="api_key", limits=limits)
            # What TenantAuth also sets per request; built once here.
            user = AuthenticatedUser(AccessToken(token="", client_id=str(tenant), scopes=[], subject=str(tenant)))
            known = self._principals[claimed] = (principal, user)
        scope[PRINCIPAL_SCOPE_KEY], scope["user"] = known
        with bind_principal(known[0]):
            await self.app(scope, receive, send)


def _services(app: Any) -> Services:
    services: Services = app.state.services
    return services


def _apply_no_db(services: Services) -> None:
    builtins = services.calls._catalog._builtins
    builtins["data_get"] = dataclasses.replace(builtins["data_get"], run=_fixed_data_get)
    builtins["data_put"] = dataclasses.replace(builtins["data_put"], run=_fixed_data_put)


def _apply_no_metrics(services: Services) -> None:
    services.metrics.observe_tool_call = lambda *args, **kwargs: None  # type: ignore[method-assign]


def _stub_auth(routes: list[BaseRoute]) -> None:
    for route in routes:
        if isinstance(route, Route) and route.path == "/mcp" and isinstance(route.app, TenantAuth):
            route.app = _StubAuth(route.app.app)


def no_db() -> Any:
    app = create_app(Settings())
    _apply_no_db(_services(app))
    return app


def no_auth() -> Any:
    app = create_app(Settings())
    _stub_auth(app.router.routes)
    return app


def no_metering() -> Any:
    """No meter round trip and no ledger write: what metering plus the ledger cost per call."""
    return create_app(Settings(metering_enabled=False))


def no_ledger() -> Any:
    """The meter's admit, but no usage event: the in-flight slot is freed without waiting (its reply is
    read, nothing waits on it), so there is no second round trip to wait for and nothing to drain."""
    app = create_app(Settings())
    services = _services(app)
    pending: set[asyncio.Task[None]] = set()

    async def record(event: Any, *, release: tuple[str, str] | None = None, audit: str | None = None) -> None:
        if release is not None:
            task = asyncio.ensure_future(services.meter.release(event.tenant_id, release[1]))
            pending.add(task)
            task.add_done_callback(pending.discard)

    services.ledger.record = record  # type: ignore[method-assign]
    return app


def redis_py() -> Any:
    """Metering with its per-call commands on redis-py, as before the lean client."""
    return create_app(Settings(redis_lean_client=False))


def no_metrics() -> Any:
    app = create_app(Settings())
    _apply_no_metrics(_services(app))
    return app


def _starlette_app(mutate: Callable[[Services, list[BaseRoute]], None] | None = None) -> Starlette:
    services = build_services(Settings())
    routes = services.gateway.routes()
    if mutate is not None:
        mutate(services, routes)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        drain = asyncio.create_task(services.drainer.run())
        try:
            async with services.gateway.run():
                yield
        finally:
            services.drainer.stop()
            await drain
            await services.aclose_redis()
            await services.db.dispose()

    return Starlette(routes=[*routes, Route("/health", health)], lifespan=lifespan)


def starlette() -> Starlette:
    return _starlette_app()


def lean() -> Starlette:
    def mutate(services: Services, routes: list[BaseRoute]) -> None:
        _apply_no_db(services)
        _apply_no_metrics(services)
        _stub_auth(routes)

    return _starlette_app(mutate)


class _AsyncpgDataGet:
    """data_get on its own asyncpg pool (made on first use, in the serving loop), as the app role, under RLS."""

    _SELECT = "SELECT value, size_bytes, updated_at FROM tenant_data WHERE key = $1"

    def __init__(self, settings: Settings) -> None:
        self._dsn = settings.app_database_url.replace("postgresql+asyncpg://", "postgresql://")
        self._size = settings.db_pool_size
        self._pool: Any = None

    async def __call__(self, ctx: ToolContext, args: Any) -> dict[str, Any]:
        import json

        import asyncpg

        if self._pool is None:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._size)
        tenant = str(uuid.UUID(str(ctx.tenant_id)))  # a canonical UUID: safe to inline as a literal
        async with self._pool.acquire() as conn:
            await conn.execute(f"BEGIN; SELECT set_config('tenantry.tenant_id', '{tenant}', true)")
            try:
                row = await conn.fetchrow(self._SELECT, args.key)
            finally:
                await conn.execute("COMMIT")
        if row is None:
            raise RuntimeError("key not found")
        return {
            "key": args.key,
            "value": json.loads(row["value"]),
            "size_bytes": row["size_bytes"],
            "updated_at": row["updated_at"].isoformat(),
        }


def asyncpg_get() -> Any:
    app = create_app(Settings())
    services = _services(app)
    builtins = services.calls._catalog._builtins
    builtins["data_get"] = dataclasses.replace(builtins["data_get"], run=_AsyncpgDataGet(services.settings))
    return app


def access_log() -> Any:
    """The gateway as `tenantry serve` runs it outside development: a JSON line per request (to the log file)."""
    from tenantry.observability import configure_logging

    configure_logging(json_lines=True, level="info")
    return create_app(Settings())


class _OnePolicy:
    """Every tenant has this compiled policy (what `Policies` holds once a tenant's policy is read)."""

    def __init__(self, policy: Any) -> None:
        self._policy = policy

    async def for_tenant(self, tenant_id: uuid.UUID) -> Any:
        return self._policy

    def forget(self, tenant_id: uuid.UUID | None = None) -> None:
        return None


def policy100() -> Any:
    from bench_policy import hundred_rules
    from tenantry.governance.policy import compile_policy

    app = create_app(Settings())
    services = _services(app)
    services.calls._gate.policies = _OnePolicy(compile_policy(hundred_rules()))  # type: ignore[union-attr,assignment]
    return app


def guardrail() -> Any:
    """Every tenant's output redacted for personal data (the policy allows everything)."""
    from tenantry.governance.policy import compile_policy

    app = create_app(Settings())
    policy = compile_policy({"default": "allow", "guardrails": {"pii": "redact"}})
    _services(app).calls._gate.policies = _OnePolicy(policy)  # type: ignore[union-attr,assignment]
    return app


def no_audit() -> Any:
    return create_app(Settings(audit_enabled=False))


def schema_lookup() -> Any:
    app = create_app(Settings())
    services = _services(app)
    schemas = {name: tool.definition.input_schema for name, tool in services.calls._catalog._builtins.items()}
    services.gateway.server.get_tool_input_schema = schemas.get
    return app


VARIANTS = (
    "no_metering",
    "no_ledger",
    "redis_py",
    "no_db",
    "no_auth",
    "no_metrics",
    "starlette",
    "lean",
    "asyncpg_get",
    "schema_lookup",
    "access_log",
    "policy100",
    "guardrail",
    "no_audit",
)
# Variants that change the process itself (its logging): served in a process of their own only.
SUBPROCESS_ONLY = ("access_log",)
