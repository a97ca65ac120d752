"""Tenants' own identity providers: tokens a tenant's issuer signed (RS256 or ES256), for that tenant only.

A tenant may register one issuer (`tenant_identity_providers`): its `iss`, the
URL of its JWKS, the audience its tokens must carry, and which claims name the
subject and the roles. A request carrying such a token names its tenant with
`Tenant-ID`; the token is verified against *that tenant's* issuer, audience
and keys, so a token of tenant A's issuer never authenticates for tenant B
(and an issuer belongs to one tenant only: the column is unique).

Keys come from the JWKS URL, fetched only after the URL passes the same SSRF
policy as upstreams (`fetch_guard`), bounded in size and time, and cached; a
token naming a key id the cache does not hold makes one refetch (at most one
per URL every `_REFETCH_S` seconds, so a stream of made-up key ids cannot
turn the gateway into a fetcher). Only asymmetric algorithms are accepted:
an HS256 token "signed" with a public key, or `alg: none`, is refused before
any claim is read.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx2
import jwt
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.db.engine import CONTROL, Database, note_tenant_changed
from tenantry.db.models import tenant_identity_providers
from tenantry.errors import Conflict, NotFound, Unauthenticated

ALGORITHMS: Final = frozenset({"RS256", "ES256"})
_REFETCH_S: Final = 10.0
_KEYS_TTL_S: Final = 300.0
_MAX_JWKS_BYTES: Final = 256 * 1024

FetchGuard = Callable[[str], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Issuer:
    tenant_id: uuid.UUID
    issuer: str
    jwks_url: str
    audience: str
    subject_claim: str = "sub"
    roles_claim: str = "roles"
    algorithms: tuple[str, ...] = ("RS256", "ES256")

    @property
    def key_id(self) -> uuid.UUID:
        """The stand-in for an API key id on this issuer's principals (stable; a kill of it stops the issuer)."""
        return uuid.uuid5(self.tenant_id, self.issuer)

    def public(self) -> dict[str, Any]:
        return {
            "tenant_id": str(self.tenant_id),
            "issuer": self.issuer,
            "jwks_url": self.jwks_url,
            "audience": self.audience,
            "subject_claim": self.subject_claim,
            "roles_claim": self.roles_claim,
            "algorithms": list(self.algorithms),
            "key_id": str(self.key_id),
        }


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    issuer: Issuer
    subject: str
    roles: frozenset[str]
    claims: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Keys:
    keys: dict[str, Any]
    fetched_at: float


_COLUMNS = (
    tenant_identity_providers.c.tenant_id,
    tenant_identity_providers.c.issuer,
    tenant_identity_providers.c.jwks_url,
    tenant_identity_providers.c.audience,
    tenant_identity_providers.c.subject_claim,
    tenant_identity_providers.c.roles_claim,
    tenant_identity_providers.c.algorithms,
)


def _issuer(row: Any) -> Issuer:
    tenant_id, issuer, jwks_url, audience, subject_claim, roles_claim, algorithms = row
    return Issuer(tenant_id, issuer, jwks_url, audience, subject_claim, roles_claim, tuple(algorithms))


async def get_issuer(conn: AsyncConnection, tenant_id: uuid.UUID) -> Issuer | None:
    query = select(*_COLUMNS).where(tenant_identity_providers.c.tenant_id == tenant_id)
    row = (await conn.execute(query)).one_or_none()
    return None if row is None else _issuer(row)


async def put_issuer(conn: AsyncConnection, issuer: Issuer) -> Issuer:
    """Register (or replace) the tenant's identity provider; 409 if another tenant has this issuer."""
    values = {k: v for k, v in issuer.public().items() if k not in ("tenant_id", "key_id")}
    values["algorithms"] = list(issuer.algorithms)
    statement = (
        insert(tenant_identity_providers)
        .values(tenant_id=issuer.tenant_id, **values)
        .on_conflict_do_update(index_elements=["tenant_id"], set_={**values, "updated_at": func.now()})
        .returning(*_COLUMNS)
    )
    try:
        async with conn.begin_nested():
            row = (await conn.execute(statement)).one()
    except IntegrityError:
        raise Conflict("another tenant has registered this issuer", code="issuer_taken") from None
    note_tenant_changed(conn, issuer.tenant_id)
    return _issuer(row)


async def delete_issuer(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    result = await conn.execute(
        delete(tenant_identity_providers).where(tenant_identity_providers.c.tenant_id == tenant_id)
    )
    if not result.rowcount:
        raise NotFound(f"tenant {tenant_id} has no identity provider", code="identity_provider_not_found")
    note_tenant_changed(conn, tenant_id)


def _invalid(why: str) -> Unauthenticated:
    return Unauthenticated(f"invalid token: {why}", code="invalid_token")


class TenantIssuers:
    def __init__(self, db: Database, fetch_guard: FetchGuard, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._guard = fetch_guard
        self._clock = clock
        self._issuers: dict[uuid.UUID, Issuer | None] = {}
        self._keys: dict[str, _Keys] = {}
        self._generation = 0
        self.fetches = 0

    def forget(self, tenant_id: uuid.UUID | None = None) -> None:
        self._generation += 1
        if tenant_id is None:
            self._issuers.clear()
        else:
            self._issuers.pop(tenant_id, None)

    async def issuer_of(self, tenant_id: uuid.UUID) -> Issuer | None:
        if tenant_id in self._issuers:
            return self._issuers[tenant_id]
        generation = self._generation
        async with self._db.tenant(tenant_id, plane=CONTROL) as conn:
            found = await get_issuer(conn, tenant_id)
        if generation == self._generation:
            self._issuers[tenant_id] = found
        return found

    async def verify(self, tenant_id: uuid.UUID, token: str) -> ExternalIdentity:
        """Who `token` (signed by `tenant_id`'s own issuer) says calls; 401 for anything else."""
        issuer = await self.issuer_of(tenant_id)
        if issuer is None:
            raise _invalid("not a token of this gateway, and the tenant has no identity provider")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _invalid(str(exc)) from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in issuer.algorithms or algorithm not in ALGORITHMS:
            raise _invalid(f"algorithm {str(algorithm)[:20]!r} is not accepted (use {', '.join(issuer.algorithms)})")
        if not isinstance(kid, str) or not kid:
            raise _invalid("the token names no key id (kid)")
        key = await self._key(issuer, kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=issuer.audience,
                issuer=issuer.issuer,
                options={"require": ["exp", "iss", "aud", issuer.subject_claim]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired", code="token_expired") from None
        except jwt.InvalidTokenError as exc:
            raise _invalid(str(exc)) from None
        subject = claims.get(issuer.subject_claim)
        if not isinstance(subject, str) or not subject or len(subject) > 200:
            raise _invalid(f"claim {issuer.subject_claim!r} must name the subject (a string of 1-200)")
        raw_roles = claims.get(issuer.roles_claim, [])
        roles = raw_roles.split() if isinstance(raw_roles, str) else raw_roles
        if not isinstance(roles, list):
            raise _invalid(f"claim {issuer.roles_claim!r} must be a list of role names or a space-separated string")
        strings = {k: str(v) for k, v in claims.items() if isinstance(v, str | int | bool) and len(str(v)) <= 500}
        return ExternalIdentity(issuer, subject, frozenset(str(r) for r in roles[:64]), strings)

    async def _key(self, issuer: Issuer, kid: str) -> Any:
        cached = self._keys.get(issuer.jwks_url)
        now = self._clock()
        fresh = cached is not None and now - cached.fetched_at < _KEYS_TTL_S
        if cached is not None and kid in cached.keys and fresh:
            return cached.keys[kid]
        if cached is None or not fresh or now - cached.fetched_at >= _REFETCH_S:
            cached = self._keys[issuer.jwks_url] = _Keys(await self._fetch(issuer.jwks_url), now)
        if kid not in cached.keys:
            raise _invalid(f"the issuer publishes no key {kid[:64]!r}")
        return cached.keys[kid]

    async def _fetch(self, url: str) -> dict[str, Any]:
        await self._guard(url)  # the SSRF policy: raises for a URL the gateway may not reach
        self.fetches += 1
        try:
            async with (
                httpx2.AsyncClient(timeout=5.0, follow_redirects=False) as client,
                client.stream("GET", url, headers={"Accept": "application/json"}) as response,
            ):
                if response.status_code != 200:
                    raise _invalid(f"the issuer's JWKS answered HTTP {response.status_code}")
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_JWKS_BYTES:
                        raise _invalid("the issuer's JWKS is too large")
            keys = jwt.PyJWKSet.from_dict(json.loads(body)).keys
        except (httpx2.HTTPError, ValueError, jwt.PyJWKSetError) as exc:
            raise Unauthenticated(
                f"the tenant's identity provider could not be read: {type(exc).__name__}", code="issuer_unavailable"
            ) from None
        return {k.key_id: k.key for k in keys if k.key_id}
