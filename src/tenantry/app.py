"""The composition root: `create_app(settings)` builds every object once; the lifespan runs and closes them."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tenantry import __version__
from tenantry import tenants as tenant_lifecycle
from tenantry.api import admin, console, governance, health, stripe_webhooks, tenant, upstreams
from tenantry.api import audit as audit_api
from tenantry.api import reports as reports_api
from tenantry.api import tiers as tiers_api
from tenantry.api.edge import TenantryApp, edge_middleware
from tenantry.api.openapi import document
from tenantry.audit.maintenance import AuditMaintenance
from tenantry.audit.records import ArgumentDigests
from tenantry.audit.trail import AuditTrail
from tenantry.auth.issuers import TenantIssuers
from tenantry.auth.resolver import CredentialResolver
from tenantry.billing.runtime import build_billing
from tenantry.db.engine import Database
from tenantry.db.ledger_schema import LEDGER_OWNERS
from tenantry.db.listener import ChangeListener
from tenantry.errors import TenantryError
from tenantry.federation.changes import UpstreamChanges
from tenantry.federation.discovery import Discovery
from tenantry.federation.pool import UpstreamPool
from tenantry.federation.ssrf import check_url
from tenantry.gateway.calls import ToolCalls
from tenantry.gateway.catalog import Catalog
from tenantry.gateway.replicas import Replicas
from tenantry.gateway.server import Gateway
from tenantry.governance.gate import Gate
from tenantry.governance.kills import KillSwitch
from tenantry.governance.store import Policies
from tenantry.governance.triggers import TriggerWatch
from tenantry.metering.cluster import ClusterClient
from tenantry.metering.commands import RedisCommands, RedisPyCommands
from tenantry.metering.drain import LedgerDrainer
from tenantry.metering.ledger import Ledger, ledger_streams
from tenantry.metering.meter import Meter
from tenantry.metering.resp import RespClient, UnsupportedURL
from tenantry.metrics import Metrics
from tenantry.observability import Tracing
from tenantry.plans import PlanBook
from tenantry.secrets import SecretBox
from tenantry.services import Services
from tenantry.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}


def hot_redis_client(settings: Settings, redis: Redis, *, timeout: float) -> RedisCommands:
    """The client of the per-call commands (`metering/commands.py`): a lean connection of its own (one per
    master of a Redis Cluster), or redis-py's pool when switched off or for a URL the lean client does not
    speak."""
    if settings.redis_cluster:
        return ClusterClient.from_url(settings.redis_url, timeout=timeout)
    if settings.redis_lean_client:
        try:
            return RespClient.from_url(settings.redis_url, timeout=timeout)
        except UnsupportedURL as exc:
            log.warning("metering uses redis-py for every command: %s", exc)
    return RedisPyCommands(redis, timeout=timeout)


def build_services(settings: Settings, *, span_exporter: SpanExporter | None = None) -> Services:
    """Every long-lived object, built once. Nothing connects until first used. `span_exporter`: where
    traces go instead of what OTEL_TRACES_EXPORTER says (tests)."""
    tracing = Tracing.configured(settings.otel_traces_exporter, span_exporter)
    db = Database(settings, tracing=tracing)
    # A blocking pool: past its size a caller waits for a connection instead of getting
    # MaxConnectionsError (a ConnectionError the meter could not tell from "Redis is down").
    # One quick retry, not redis-py's default ten: a down Redis must be noticed fast.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=64,
        timeout=settings.meter_timeout_seconds,
        socket_connect_timeout=settings.meter_timeout_seconds,
        socket_timeout=2,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
    )
    redis = Redis.from_pool(pool)
    metrics = Metrics(tenant_labels=settings.metrics_tenant_labels)
    plans = PlanBook(settings)
    guard = functools.partial(
        check_url, allow_private=settings.upstream_allow_private, allow_loopback=settings.upstream_allow_loopback
    )
    issuers = TenantIssuers(db, guard)
    listener = ChangeListener(settings.direct_database_url)  # LISTEN needs a session: never pooled
    # While the listener holds its connection, every change of a credential reaches the resolver.
    resolver = CredentialResolver(settings, db, plans, issuers=issuers, announced=lambda: listener.listening)
    hot = hot_redis_client(settings, redis, timeout=settings.meter_timeout_seconds)
    meter = Meter(hot, key_prefix=settings.redis_key_prefix)
    streams = ledger_streams(settings.redis_key_prefix, settings.ledger_shards)
    ledger = Ledger(hot, db, stream=streams, meter=meter)
    audit = AuditTrail(ledger, ArgumentDigests(settings.secret_keys), metrics, enabled=settings.audit_enabled)
    # The drainer's own connection: its blocking read (1 s) must not stall the meter's commands.
    drain_client = hot_redis_client(settings, redis, timeout=5.0)
    drainer = LedgerDrainer(
        drain_client, db, stream=streams, claim_idle_ms=int(settings.ledger_claim_idle_seconds * 1000)
    )
    policies = Policies(db)
    kill_switch = KillSwitch(db, listener)
    gate = Gate(policies, kill_switch, TriggerWatch(db, kill_switch))
    tenant_lifecycle.watch(db, listener, resolver.forget, meter.forget, policies.forget, issuers.forget)
    secrets = SecretBox(settings.secret_keys)
    discovery = Discovery(settings, db, UpstreamPool(settings, secrets, tracing=tracing))
    catalog = Catalog.built(settings, discovery, read_cost=settings.resource_read_cost)
    calls = ToolCalls(
        settings,
        db,
        catalog,
        metrics,
        meter=meter,
        ledger=ledger,
        plans=plans,
        gate=gate,
        tracing=tracing,
        audit=audit,
    )
    replicas = Replicas(redis, key_prefix=settings.redis_key_prefix, address=settings.replica_base_url)
    gateway = Gateway(settings, calls, resolver, metrics, audit, replicas=replicas)
    kill_switch.on_session_kill.append(gateway.end_session)
    return Services(
        settings,
        db,
        redis,
        metrics,
        tracing,
        resolver,
        calls,
        gateway,
        plans=plans,
        meter=meter,
        ledger=ledger,
        drainer=drainer,
        secrets=secrets,
        discovery=discovery,
        listener=listener,
        changes=UpstreamChanges(listener, discovery),
        policies=policies,
        kills=kill_switch,
        issuers=issuers,
        billing=build_billing(settings, db),
        hot=hot,
        drain_client=drain_client,
        audit=audit,
        audit_maintenance=AuditMaintenance(db, settings.audit_retention_months),
        catalog=catalog,
    )


async def _refuse_unsafe_app_role(services: Services) -> None:
    """An app role (or a ledger role, which runs the drain's batch writer) that bypasses RLS would silently
    turn isolation off: refuse to serve with one."""
    try:
        async with services.db.unbound() as conn:
            row = (
                await conn.execute(text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"))
            ).one()
            ledger = (await conn.execute(text(LEDGER_OWNERS))).all()
    except (DBAPIError, OSError) as exc:
        log.warning("database not reachable at startup (%s); /health will say so", type(exc).__name__)
        return
    if row.rolsuper or row.rolbypassrls:
        raise RuntimeError(f"database role {services.db.app_role!r} bypasses row-level security; refusing to start")
    for owner in ledger:
        if owner.bypasses_rls:
            raise RuntimeError(f"ledger role {owner.rolname!r} bypasses row-level security; refusing to start")


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if request.url.path.startswith("/console/"):  # a browser's page: an HTML error, not JSON
        return console.invalid_request_page(exc)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse({"error": "invalid_json", "detail": "the request body is not valid JSON"}, 400)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: "
        + ("must be printable text" if e.get("type") == "string_pattern_mismatch" else str(e.get("msg")))
        for e in errors[:5]
    )
    return JSONResponse({"error": "invalid_request", "detail": problems}, 400)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path; a path served by several routes
        # (GET and POST /api/tenants) allows all of theirs.
        allowed = [
            method
            for method in ("GET", "POST", "PATCH", "DELETE")
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.routes)
        ]
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    if request.url.path.startswith("/console/"):  # a browser's page: an HTML error, not JSON
        return console.http_error_page(exc.status_code, exc.detail, headers)
    return JSONResponse({"error": code, "detail": exc.detail}, exc.status_code, headers=headers)


def _tenantry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TenantryError)
    if request.url.path.startswith("/console/"):  # a browser's page: an HTML error, not JSON
        return console.error_page(exc)
    return exc.to_response()


def create_app(settings: Settings | None = None, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    settings = settings or Settings()
    services = build_services(settings, span_exporter=span_exporter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await _refuse_unsafe_app_role(services)
        drain = asyncio.create_task(services.drainer.run(), name="ledger-drain")
        maintenance = services.audit_maintenance
        partitions = asyncio.create_task(maintenance.run(), name="audit-partitions") if maintenance else None
        services.changes.start()
        services.listener.start()
        await services.kills.start()
        billing = services.billing
        try:
            async with services.gateway.run():
                if billing is not None:
                    await billing.start(settings)
                yield {}
        finally:
            # In-flight calls have finished (the session manager waited for them); move what
            # they recorded into PostgreSQL before the connections close.
            services.drainer.stop()
            await drain
            if maintenance is not None and partitions is not None:
                maintenance.stop()
                await partitions
            if billing is not None:
                await billing.stop()
            await services.kills.aclose()
            await services.listener.aclose()
            await services.changes.aclose()
            await services.discovery.aclose()
            await services.aclose_redis()
            await services.db.dispose()
            services.tracing.shutdown()

    edge = edge_middleware(settings, services.tracing, services.audit)
    app = TenantryApp(title="Tenantry", version=__version__, lifespan=lifespan, middleware=edge)
    app.state.services = services
    document(app)
    app.add_exception_handler(TenantryError, _tenantry_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(admin.router)
    app.include_router(tiers_api.router)
    app.include_router(tenant.router)
    app.include_router(upstreams.router)
    app.include_router(governance.router)
    app.include_router(audit_api.router)
    app.include_router(reports_api.router)
    app.include_router(health.router)
    app.include_router(stripe_webhooks.router)
    console.install(app)
    # The MCP endpoints first: they take most requests, and routing tries routes in order.
    app.router.routes[:0] = services.gateway.routes()
    app.serve_mcp_directly(services.gateway.mcp_endpoint)
    return app
