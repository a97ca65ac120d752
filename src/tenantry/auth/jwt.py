"""Short-lived JWTs for tenants and admins (HS256, algorithm and audience pinned).

Tenant and admin tokens carry different audiences, so neither can stand in
for the other. Decoding accepts exactly one algorithm: `alg: none` and
RS/HS confusion tokens fail before any claim is read.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt

from tenantry.errors import Unauthenticated
from tenantry.settings import Settings

ALGORITHM = "HS256"
TENANT_AUDIENCE = "tenantry:tenant"
ADMIN_AUDIENCE = "tenantry:admin"
# Onboarding's canary: the only credential a tenant still `provisioning` is admitted with (billing).
CANARY_AUDIENCE = "tenantry:canary"
CANARY_PREFIX = "tcn_"
CANARY_TTL_SECONDS = 120


def _issue(settings: Settings, audience: str, subject: str, ttl: int, extra: dict[str, Any]) -> str:
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        **extra,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)


@dataclass(frozen=True, slots=True)
class TenantToken:
    """What a tenant token says: the tenant, the key that bounds its life (revoke the key, and every
    token minted from it stops), and, when it names them, who it speaks for, with which roles and claims."""

    tenant_id: uuid.UUID
    key_id: uuid.UUID
    subject: str | None = None  # None: the key's subject
    roles: frozenset[str] | None = None  # None: the key's roles
    claims: dict[str, str] = field(default_factory=dict)
    tools: tuple[str, ...] | None = None  # None: the key's tool scope


def issue_tenant_token(
    settings: Settings,
    tenant_id: uuid.UUID,
    key_id: uuid.UUID,
    *,
    subject: str,
    roles: Iterable[str],
    claims: dict[str, str] | None = None,
    tools: Iterable[str] | None = None,
    ttl: int | None = None,
) -> str:
    extra: dict[str, Any] = {"tid": str(tenant_id), "kid": str(key_id), "roles": sorted(roles)}
    if claims:
        extra["claims"] = claims
    if tools is not None:
        extra["tools"] = list(tools)
    return _issue(settings, TENANT_AUDIENCE, subject, ttl or settings.tenant_token_ttl_seconds, extra)


def issue_admin_token(settings: Settings) -> str:
    return _issue(settings, ADMIN_AUDIENCE, "admin", settings.admin_token_ttl_seconds, {})


def _decode(settings: Settings, token: str, audience: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("token expired", code="token_expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthenticated(f"invalid token: {exc}", code="invalid_token") from None
    return claims


def decode_tenant_token(settings: Settings, token: str) -> TenantToken:
    """What a valid tenant token says. A token minted before identities (`sub` = the tenant, no `tid`)
    speaks for its key's subject with its key's roles."""
    claims = _decode(settings, token, TENANT_AUDIENCE)
    try:
        key_id = uuid.UUID(str(claims["kid"]))
        if "tid" not in claims:
            return TenantToken(uuid.UUID(str(claims["sub"])), key_id)
        roles, extra, tools = claims.get("roles", []), claims.get("claims", {}), claims.get("tools")
        if not isinstance(roles, list) or not isinstance(extra, dict) or not isinstance(tools, list | None):
            raise ValueError("roles and tools must be lists and claims an object")
        return TenantToken(
            uuid.UUID(str(claims["tid"])),
            key_id,
            str(claims["sub"]),
            frozenset(str(r) for r in roles),
            {str(k): str(v) for k, v in extra.items() if isinstance(v, str | int | bool)},
            None if tools is None else tuple(str(t) for t in tools),
        )
    except (KeyError, ValueError):
        raise Unauthenticated("invalid token: malformed claims", code="invalid_token") from None


def issue_canary_token(settings: Settings, tenant_id: uuid.UUID, key_id: uuid.UUID) -> str:
    """A short-lived token the gateway mints for itself to run onboarding's canary call."""
    token = _issue(settings, CANARY_AUDIENCE, str(tenant_id), CANARY_TTL_SECONDS, {"kid": str(key_id)})
    return CANARY_PREFIX + token


def decode_canary_token(settings: Settings, token: str) -> tuple[uuid.UUID, uuid.UUID]:
    claims = _decode(settings, token.removeprefix(CANARY_PREFIX), CANARY_AUDIENCE)
    try:
        return uuid.UUID(str(claims["sub"])), uuid.UUID(str(claims["kid"]))
    except (KeyError, ValueError):
        raise Unauthenticated("invalid token: malformed subject", code="invalid_token") from None


def decode_admin_token(settings: Settings, token: str) -> None:
    _decode(settings, token, ADMIN_AUDIENCE)
