"""Admin REST for governance: a tenant's policy (read, replace, delete, dry-run), its own identity provider,
its trigger firings, and kills (make, list, lift)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry import tenants as tenant_service
from tenantry.api.deps import AdminDep, ServicesDep
from tenantry.api.fields import Roles, Strict, Subject
from tenantry.api.openapi import errors
from tenantry.audit.changes import note_change
from tenantry.auth import api_keys, issuers
from tenantry.auth.issuers import Issuer
from tenantry.errors import BadRequest, NotFound
from tenantry.federation.ssrf import check_url
from tenantry.governance import kills, store
from tenantry.governance.policy import dry_run
from tenantry.governance.triggers import recent_firings
from tenantry.services import Services
from tenantry.tenancy import parse_tenant_id

router = APIRouter(prefix="/api", responses=errors(400, 401, 404, 409, 413), dependencies=[AdminDep])


@asynccontextmanager
async def _of_tenant(services: Services, tenant_id: str) -> AsyncIterator[tuple[AsyncConnection, uuid.UUID]]:
    """An owner transaction about an existing tenant (400 for a malformed id, 404 for an unknown one)."""
    tid = parse_tenant_id(tenant_id)
    async with services.db.system() as conn:
        await tenant_service.get_tenant(conn, tid)
        yield conn, tid


class PolicyPut(Strict):
    document: dict[str, Any] = Field(description="The policy document (see the README, 'Governance').")
    expected_version: int | None = Field(
        None, ge=0, description="The version this edit was made on (0: none yet); 409 if another came first."
    )


class KillCreate(Strict):
    scope: Literal["session", "key", "subject", "tool", "tenant"]
    tenant_id: uuid.UUID | None = Field(None, description="Required, except for a tool killed for every tenant.")
    target: str | None = Field(
        None,
        min_length=1,
        max_length=300,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The session id, key id, subject or tool name (not for a tenant).",
    )
    reason: str = Field("", max_length=500, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$")


Printable = Annotated[str, Field(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")]
ClaimName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:/-]+$")]


Algorithm = Literal["RS256", "ES256"]
_BOTH: tuple[Algorithm, ...] = ("RS256", "ES256")


class IdentityProviderPut(Strict):
    issuer: Printable = Field(description="The `iss` its tokens carry (one tenant per issuer).")
    jwks_url: str = Field(min_length=1, max_length=2048, description="Where its signing keys are (JWKS).")
    audience: Printable = Field(description="The `aud` its tokens must carry for this gateway.")
    subject_claim: ClaimName = "sub"
    roles_claim: ClaimName = "roles"
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(_BOTH), min_length=1)


class DryRun(Strict):
    subject: Subject
    roles: Roles = Field(default_factory=list)
    claims: dict[str, Annotated[str, Field(max_length=500)]] = Field(default_factory=dict, max_length=32)
    tool: str = Field(min_length=1, max_length=200)
    arguments: dict[str, Any] = Field(default_factory=dict)
    document: dict[str, Any] | None = Field(None, description="A draft to try instead of the stored policy.")


@router.get("/tenants/{tenant_id}/policy")
async def get_policy(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    async with _of_tenant(services, tenant_id) as (conn, tid):
        stored = await store.get_policy(conn, tid)
    if stored is None:
        raise NotFound(f"tenant {tid} has no policy: every tool, any arguments", code="policy_not_found")
    return stored.public()


@router.put("/tenants/{tenant_id}/policy")
async def put_policy(tenant_id: str, body: PolicyPut, services: ServicesDep) -> dict[str, Any]:
    async with _of_tenant(services, tenant_id) as (conn, tid):
        before = await store.get_policy(conn, tid)
        stored = await store.put_policy(conn, tid, body.document, expected_version=body.expected_version)
    note_change(tid, "policy.put", tid, before.public() if before else None, stored.public())
    return stored.public()


@router.delete("/tenants/{tenant_id}/policy")
async def delete_policy(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    async with _of_tenant(services, tenant_id) as (conn, tid):
        before = await store.get_policy(conn, tid)
        await store.delete_policy(conn, tid)
    note_change(tid, "policy.delete", tid, before.public() if before else None, None)
    return {"tenant_id": str(tid), "policy": None}


@router.put("/tenants/{tenant_id}/identity-provider")
async def put_identity_provider(tenant_id: str, body: IdentityProviderPut, services: ServicesDep) -> dict[str, Any]:
    """Accept tokens the tenant's own issuer signs (with the request's Tenant-ID naming the tenant)."""
    tid = parse_tenant_id(tenant_id)
    settings = services.settings
    await check_url(
        body.jwks_url, allow_private=settings.upstream_allow_private, allow_loopback=settings.upstream_allow_loopback
    )
    issuer = Issuer(
        tid,
        body.issuer,
        body.jwks_url,
        body.audience,
        body.subject_claim,
        body.roles_claim,
        tuple(dict.fromkeys(body.algorithms)),
    )
    async with _of_tenant(services, tenant_id) as (conn, _):
        before = await issuers.get_issuer(conn, tid)
        stored = await issuers.put_issuer(conn, issuer)
    note_change(tid, "identity_provider.put", tid, before.public() if before else None, stored.public())
    return stored.public()


@router.get("/tenants/{tenant_id}/identity-provider")
async def get_identity_provider(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    async with _of_tenant(services, tenant_id) as (conn, tid):
        found = await issuers.get_issuer(conn, tid)
    if found is None:
        raise NotFound(f"tenant {tid} has no identity provider", code="identity_provider_not_found")
    return found.public()


@router.delete("/tenants/{tenant_id}/identity-provider")
async def delete_identity_provider(tenant_id: str, services: ServicesDep) -> dict[str, Any]:
    async with _of_tenant(services, tenant_id) as (conn, tid):
        before = await issuers.get_issuer(conn, tid)
        await issuers.delete_issuer(conn, tid)
    note_change(tid, "identity_provider.delete", tid, before.public() if before else None, None)
    return {"tenant_id": str(tid), "identity_provider": None}


@router.get("/tenants/{tenant_id}/triggers")
async def trigger_firings(
    tenant_id: str, services: ServicesDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """The tenant's latest trigger firings (a looping agent, a probing subject), newest first."""
    async with _of_tenant(services, tenant_id) as (_, tid):
        pass  # it exists; its firings are read under its own RLS binding
    return {"firings": await recent_firings(services.db, tid, limit)}


@router.post("/kills", status_code=201)
async def create_kill(body: KillCreate, services: ServicesDep) -> dict[str, Any]:
    """Stop new calls in the scope at once on every replica, and cancel those in flight."""
    if body.tenant_id is None and body.scope != "tool":
        raise BadRequest(f"a {body.scope} kill names its tenant_id", code="invalid_request")
    if body.scope == "tenant":
        target = str(body.tenant_id)
    elif body.target is None:
        raise BadRequest(f"a {body.scope} kill names its target", code="invalid_request")
    else:
        target = body.target
    async with services.db.system() as conn:
        if body.tenant_id is not None:
            await tenant_service.get_tenant(conn, body.tenant_id)
        if body.scope == "key":
            keys = {str(k.id) for k in await api_keys.list_keys(conn, body.tenant_id)} if body.tenant_id else set()
            if target not in keys:
                raise NotFound(f"no key {target[:64]} for tenant {body.tenant_id}", code="key_not_found")
        kill = await kills.create_kill(conn, body.tenant_id, body.scope, target, body.reason)
    await services.kills.reload()  # in effect here before the answer; elsewhere within a second
    note_change(body.tenant_id, "kill.create", kill.id, None, kill.public())
    return kill.public()


@router.get("/kills")
async def list_kills(
    services: ServicesDep,
    tenant_id: Annotated[uuid.UUID | None, Query(description="Only those applying to this tenant")] = None,
    lifted: Annotated[bool, Query(description="Include lifted kills")] = False,
) -> dict[str, Any]:
    async with services.db.system() as conn:
        found = await kills.list_kills(conn, live=not lifted, applies_to=tenant_id)
    return {"kills": [k.public() for k in found]}


@router.delete("/kills/{kill_id}")
async def lift_kill(kill_id: uuid.UUID, services: ServicesDep) -> dict[str, Any]:
    """Lifting is explicit: what was stopped may call again (calls cancelled stay cancelled)."""
    async with services.db.system() as conn:
        kill = await kills.lift_kill(conn, kill_id)
    await services.kills.reload()
    note_change(kill.applies_to, "kill.lift", kill_id, None, kill.public())
    return kill.public()


@router.post("/tenants/{tenant_id}/policy/dry-run")
async def policy_dry_run(tenant_id: str, body: DryRun, services: ServicesDep) -> dict[str, Any]:
    """May `subject` with `roles` (and `claims`) call `tool` with `arguments`, and what would the tool get?"""
    async with _of_tenant(services, tenant_id) as (conn, tid):
        stored = await store.get_policy(conn, tid)
    raw = body.document if body.document is not None else (stored.document if stored else None)
    return dry_run(raw, tid, body.subject, frozenset(body.roles), body.claims, body.tool, body.arguments)
