"""TenantAuth: pure ASGI authentication in front of the MCP endpoints.

For every HTTP request it resolves `Authorization: Bearer` (an API key or a
tenant JWT) to a Principal, checks `Tenant-ID` agrees with it, and then:
- stores the principal in the ASGI scope, where each MCP message handler
  reads it from *its own* request (re-derived per message, never inherited);
- sets `scope["user"]` to the tenant, which the MCP SDK's session managers
  compare on every request of a stateful session, so a session opened by
  tenant A answers "session not found" to tenant B's credentials;
- binds the principal contextvar and resets it in `finally`.

Pure ASGI because `BaseHTTPMiddleware` breaks contextvars and streaming.
"""

from __future__ import annotations

import dataclasses

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantry.auth.resolver import CredentialResolver
from tenantry.errors import Forbidden, TenantryError, Unauthenticated
from tenantry.metrics import Metrics
from tenantry.observability import note
from tenantry.tenancy import Principal, bind_principal, parse_tenant_id

PRINCIPAL_SCOPE_KEY = "tenantry.principal"


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing Authorization: Bearer credential", code="missing_credentials")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Authorization must be 'Bearer <API key or tenant token>'", code="invalid_credentials")
    return token


async def authenticate(resolver: CredentialResolver, headers: Headers) -> Principal:
    """The principal these request headers prove, or the error that says why not."""
    claimed = headers.get("tenant-id")
    claimed_id = parse_tenant_id(claimed) if claimed is not None else None
    principal = await resolver.resolve(bearer_token(headers.get("authorization")), claimed_id)
    if claimed_id is not None and claimed_id != principal.tenant_id:
        raise Forbidden("Tenant-ID does not match the credential's tenant", code="tenant_mismatch")
    note(tenant=str(principal.tenant_id), subject=principal.subject, key=str(principal.key_id))
    session = headers.get("mcp-session-id")
    if session:  # stateful MCP: the session the request belongs to (a kill can name it)
        principal = dataclasses.replace(principal, session=session[:200])
        note(session=principal.session)
    return principal


def principal_from_scope(scope: Scope) -> Principal | None:
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else None


class TenantAuth:
    def __init__(self, app: ASGIApp, resolver: CredentialResolver, metrics: Metrics) -> None:
        self.app = app
        self.resolver = resolver
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            principal = await authenticate(self.resolver, Headers(scope=scope))
        except TenantryError as exc:
            self.metrics.auth_failures.labels(exc.code).inc()
            await exc.to_response()(scope, receive, send)
            return
        tenant = str(principal.tenant_id)
        scope[PRINCIPAL_SCOPE_KEY] = principal
        # A stateful session is bound to this (the SDK compares it on every request of the session): the
        # tenant, the key and the subject that opened it; nobody else may use it.
        who = f"{tenant}/{principal.key_id}/{principal.subject}"
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=tenant, scopes=[], subject=who))
        with bind_principal(principal):
            await self.app(scope, receive, send)
