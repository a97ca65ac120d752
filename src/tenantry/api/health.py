"""Ops: `/health` (and `?tenant=`) and `/metrics`.

Plain `/health` is public and says only ok/degraded per check (a load
balancer needs no more); `/health/live` says only that the process answers
(a liveness probe must not fail because PostgreSQL or Redis did). Everything else needs the ops credential (the ops
key, the admin key or an admin token): the detail of each check, `?tenant=`
(checked before any work, so a stranger can neither learn whether a tenant
exists nor make the gateway contact its upstreams) and `/metrics`.

Each check answers on its own, within a timeout, and is named in the body;
any failing check makes the answer 503 (`upstream_changes`, the listener
for upstream changes, is reported but never fails: while it is down the
discovery TTL still bounds staleness; `quotas`, every kind of quota as
used/limit, fails only when the counts cannot be read: a tenant at its
limit is refused as its plan says, which is the gateway working, so it is
listed in `at_limit`, not degraded). The RLS canary runs as the
application role, the way tool calls do, and proves both halves of
isolation: the bound tenant sees exactly its own rows, and nothing of
anyone else's (nor anything at all when no tenant is bound).
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from tenantry import __version__, tier_moves, tls
from tenantry import tenants as tenant_service
from tenantry.api.deps import OpsDep, ServicesDep, is_ops, require_ops
from tenantry.api.openapi import errors
from tenantry.billing.health import billing_checks, billing_configured, tenant_billing
from tenantry.db.engine import CONTROL
from tenantry.db.ledger_schema import LEDGER_OWNERS
from tenantry.metering.drain import backlog
from tenantry.metering.quotas import at_limit, quota_usage
from tenantry.plans import Limits
from tenantry.services import Services
from tenantry.tenancy import parse_tenant_id

router = APIRouter()

CHECK_TIMEOUT_SECONDS = 2.0
Check = dict[str, Any]

_ROLE = text(
    """
    SELECT r.rolsuper, r.rolbypassrls,
           (SELECT count(*) FROM tenant_data) AS rows_visible_unbound,
           (SELECT count(*) FROM tenants) AS tenants_visible_unbound
    FROM pg_roles r WHERE r.rolname = current_user
    """
)
# On the tenant's data plane, wherever its tier puts it (so the canary proves the tier it is really on).
_TENANT_VIEW = text(
    """
    SELECT (SELECT count(*) FROM tenant_data) AS own_rows,
           (SELECT count(*) FROM tenant_data WHERE tenant_id <> :tenant_id) AS foreign_rows,
           current_setting('tenantry.tenant_id', true) AS bound
    """
)
_TENANTS_VISIBLE = text("SELECT count(*) FROM tenants")
_SYSTEM_COUNT = text("SELECT count(*) FROM tenant_data WHERE tenant_id = :tenant_id")


async def _run(check: Callable[[], Awaitable[Check]]) -> Check:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            return await check()
    except TimeoutError:
        return {"status": "fail", "detail": f"no answer within {CHECK_TIMEOUT_SECONDS}s"}
    except Exception as exc:  # a health check reports every failure; it never raises
        return {"status": "fail", "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}


async def _database(s: Services) -> Check:
    async with s.db.system() as conn:
        await conn.execute(text("SELECT 1"))
    return {"status": "ok", "pool": s.db.pool_status()}


async def _redis(s: Services) -> Check:
    policy = {plan: "fail_open" if p.fail_open else "fail_closed" for plan, p in s.settings.plan_limits.items()}
    try:
        if s.meter.down:  # it failed to answer a moment ago: say so at once instead of waiting again
            raise ConnectionError("the meter's breaker is open: Redis did not answer a moment ago")
        async with asyncio.timeout(s.settings.meter_timeout_seconds):
            await s.redis.ping()
    except Exception as exc:  # reported, never raised
        return {
            "status": "fail",
            "state": "down",
            "detail": f"{type(exc).__name__}: {str(exc)[:200]}",
            "when_down": policy,
            "meter_failures": s.meter.failures,
            "abandoned_admissions": len(s.meter.abandoned),
        }
    return {"status": "ok", "state": "up", "when_down": policy, "meter_failures": s.meter.failures}


async def _ledger(s: Services) -> Check:
    """The usage ledger: how far the drain into PostgreSQL lags, and whether it is failing."""
    if s.meter.down:
        return {"status": "fail", "detail": "Redis, which holds the stream, did not answer a moment ago"}
    async with asyncio.timeout(s.settings.meter_timeout_seconds):
        lag_ms, dead = await backlog(s.commands, s.ledger.streams)
    limit_ms = int(s.settings.ledger_max_lag_seconds * 1000)
    ok = lag_ms <= limit_ms
    check: Check = {
        "status": "ok" if ok else "fail",
        "lag_ms": lag_ms,
        "max_lag_ms": limit_ms,
        "drained": s.drainer.drained,
        "postgres_fallbacks": s.ledger.fallbacks,
        # Entries PostgreSQL can never take (malformed, or their tenant is gone), kept for inspection
        # in the dead-letter stream; they do not fail the check: no replica can fix them by retrying.
        "dead_letters": dead,
    }
    if s.drainer.last_error:
        check["last_error"] = s.drainer.last_error
    if not ok:
        check["detail"] = f"the oldest usage event not yet in PostgreSQL is {lag_ms / 1000:.0f}s old"
    return check


def _audit(s: Services) -> Check:
    """The audit trail: records lost since start (neither Redis nor PostgreSQL took them), and whether the
    monthly partitions are kept. Informational: a replica that cannot write its trail still answers."""
    if s.audit is None or not s.audit.enabled:
        return {"status": "ok", "enabled": False}
    # With the records of plan-driven tier moves the mover could not write (`tier_moves.py`).
    unrecorded = s.billing.mover.unrecorded if s.billing is not None else 0
    check: Check = {"status": "ok", "enabled": True, "lost_records": s.audit.failures + unrecorded}
    maintenance = s.audit_maintenance
    if maintenance is not None and maintenance.last_error:
        check["partitions_error"] = maintenance.last_error
    return check


async def _app_role(s: Services) -> Check:
    async with s.db.unbound() as conn:
        row = (await conn.execute(_ROLE)).one()
        ledger = (await conn.execute(text(LEDGER_OWNERS))).all()
    ok = (
        not row.rolsuper and not row.rolbypassrls and row.rows_visible_unbound == 0 and row.tenants_visible_unbound == 0
    )
    return {
        "status": "ok" if ok and not any(owner.bypasses_rls for owner in ledger) else "fail",
        "role": s.db.app_role,
        "superuser": row.rolsuper,
        "bypass_rls": row.rolbypassrls,
        "rows_visible_without_tenant": row.rows_visible_unbound + row.tenants_visible_unbound,
        # The drain's batch writer runs as its own role (migration 0021): it must not bypass RLS either.
        "ledger_roles": {owner.rolname: {"bypass_rls": owner.bypasses_rls} for owner in ledger},
    }


async def _rls_canary(s: Services, tenant_id: uuid.UUID) -> Check:
    """Through the router, in the tenant's real tier: the app role sees exactly the rows the owner counts
    there, none of anyone else's, and (on the shared control plane) only its own tenant row."""
    placement = await s.db.router.placement(tenant_id)
    async with s.db.tenant(tenant_id) as conn:
        view = (await conn.execute(_TENANT_VIEW, {"tenant_id": tenant_id})).one()
    async with s.db.tenant(tenant_id, plane=CONTROL) as conn:
        tenants_visible = (await conn.execute(_TENANTS_VISIBLE)).scalar_one()
    async with s.db.system_data(tenant_id) as conn:
        expected = (await conn.execute(_SYSTEM_COUNT, {"tenant_id": tenant_id})).scalar_one()
    ok = view.own_rows == expected and view.foreign_rows == 0 and tenants_visible == 1 and view.bound == str(tenant_id)
    return {
        "status": "ok" if ok else "fail",
        "tier": placement.tier,
        "own_rows": view.own_rows,
        "expected_rows": expected,
        "foreign_rows_visible": view.foreign_rows,
    }


async def _quota(s: Services, tenant_id: uuid.UUID, limits: Limits) -> Check:
    """The tenant's quota window as its next call would see it (ok even when exhausted: that is not a fault)."""
    return {"status": "ok", **(await s.meter.usage(tenant_id, limits))}


async def _quotas(s: Services, tenant_id: uuid.UUID, limits: Limits) -> Check:
    """Every kind of quota as used/limit, and which are at their limit. A tenant at (or past) a limit is
    being refused as its plan says, which is the gateway working: ok. It fails only when the counts
    cannot be read (the meter's Redis, the database), which the `redis`/`database` checks explain."""
    tools = await s.tool_counts(tenant_id, limits)
    async with s.db.system() as conn:
        found = await quota_usage(conn, s.meter, tenant_id, limits, db=s.db, tools=tools)
    return {"status": "ok", "at_limit": at_limit(found), **found}


async def _upstreams(s: Services, tenant_id: uuid.UUID) -> dict[str, Check]:
    """One check per upstream of the tenant, discovered live (bounded by the upstream timeouts)."""
    try:
        view = await s.discovery.view(tenant_id, fresh=True)
    except Exception as exc:  # a health check reports every failure; it never raises
        return {"upstreams": {"status": "fail", "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}}
    return {f"upstream:{st.upstream.name}": st.check() for st in view.statuses.values()}


@router.get("/health/live")
async def live() -> dict[str, str]:
    """Liveness: this process's event loop answers. Public, and it asks nothing of PostgreSQL, Redis or
    upstreams, so a restart-on-failure probe (Kubernetes `livenessProbe`) does not restart every replica
    when a shared dependency blips; whether a replica should take traffic is `/health` (readiness)."""
    return {"status": "alive"}


@router.get("/health", response_model=None, responses=errors(400, 401, 404, 503))
async def health(
    request: Request, services: ServicesDep, tenant: Annotated[str | None, Query()] = None
) -> JSONResponse:
    """Public: ok/degraded per check, nothing more. With the ops credential: each check's detail, the
    process, and with `tenant=`, that tenant's checks (which nobody else may ask for: they name its
    plan, usage and upstreams, and run a discovery against its upstreams)."""
    ops = is_ops(request, services)
    if tenant is not None and not ops:
        require_ops(request, services)  # the 401 that says what was wrong
    tenant_id = parse_tenant_id(tenant) if tenant is not None else None
    healthy, body, checks = await run_checks(services, tenant_id)
    if not ops:  # what a load balancer needs, and nothing a stranger could learn from
        public = {
            "status": "ok" if healthy else "degraded",
            "checks": {n: {"status": c["status"]} for n, c in checks.items()},
        }
        return JSONResponse(public, status_code=200 if healthy else 503)
    body = {"status": "ok" if healthy else "degraded", **body, "process": await _process(services), "checks": checks}
    return JSONResponse(body, status_code=200 if healthy else 503)


async def run_checks(services: Services, tenant_id: uuid.UUID | None) -> tuple[bool, dict[str, Any], dict[str, Check]]:
    """(healthy, what names the tenant, every check): what `/health` answers (and the console shows)."""
    checks: dict[str, Check] = {}
    body: dict[str, Any] = {}
    if tenant_id is not None:
        async with services.db.system() as conn:
            found = await tenant_service.get_tenant(conn, tenant_id)
        placement = await services.db.router.placement(tenant_id)
        body["tenant"] = {"id": str(found.id), "status": found.status, "plan": found.plan, "tier": placement.tier}
        limits = services.plans.limits(found.plan, found.limits)
    names = ["database", "redis", "app_role", "ledger"]
    jobs = [
        _run(lambda: _database(services)),
        _run(lambda: _redis(services)),
        _run(lambda: _app_role(services)),
        _run(lambda: _ledger(services)),
    ]
    if tenant_id is not None:
        names += ["rls_canary", "quota", "quotas"]
        jobs += [
            _run(lambda: _rls_canary(services, tenant_id)),
            _run(lambda: _quota(services, tenant_id, limits)),
            _run(lambda: _quotas(services, tenant_id, limits)),
        ]
    if billing_configured(services.settings):
        for name, check in billing_checks(services.db, services.settings).items():
            names.append(name)
            jobs.append(_run(check))
        if tenant_id is not None:
            names += ["billing_tenant", "tier_move"]
            jobs.append(_run(lambda: tenant_billing(services.db, tenant_id)))
            jobs.append(_run(lambda: tier_moves.tenant_health(services.db, services.settings, tenant_id)))
    for name, result in zip(names, await asyncio.gather(*jobs), strict=True):
        checks[name] = result
    checks["upstream_changes"] = services.changes.check()
    checks["audit"] = _audit(services)
    # Informational: whether this replica terminates TLS and prefers post-quantum key exchange.
    checks["tls"] = tls.status(services.settings.tls_groups, serving_tls=services.settings.tls_certfile is not None)
    if tenant_id is not None:
        checks.update(await _upstreams(services, tenant_id))
    healthy = all(c["status"] == "ok" for c in checks.values())
    return healthy, body, checks


_STARTED = time.time()
_ACTIVE_TENANTS = text("SELECT count(*) FROM tenants WHERE status = 'active'")


async def _process(s: Services) -> dict[str, Any]:
    """This replica: its id (the one its stateful sessions' ids start with), version, uptime, memory, and
    how many tenants are active."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), s.db.system() as conn:
            active: int | None = (await conn.execute(_ACTIVE_TENANTS)).scalar_one()
    except Exception:  # reported as unknown; the database check says why
        active = None
    return {
        "replica": s.gateway.replica_id,
        "version": __version__,
        "uptime_seconds": round(time.time() - _STARTED, 1),
        "memory_rss_bytes": _rss_bytes(),
        "active_tenants": active,
    }


def _rss_bytes() -> int | None:
    """Resident memory now (Linux /proc), else the peak resident memory the OS reports."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@router.get("/metrics", dependencies=[OpsDep], responses=errors(401))
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
