"""Turn a bearer credential into a Principal, with a short-lived cache.

The credential lookup runs before any tenant is known, so it reads through
the owner's pool (one indexed query on the key hash). Its answer (key ->
tenant, revoked?, tenant status, plan and limits) is cached. A change of a
key or a tenant, made anywhere, reaches `forget` on every replica
(`tenants.watch`): at once in the process that made it, within about a
second elsewhere. So while those announcements arrive (`announced()`: the
change listener holds its connection), an entry is trusted until a change
forgets it; `auth_cache_ttl_seconds` bounds staleness only while they cannot
arrive (the listener is down; when it reconnects, everything is forgotten).

Why not the TTL always: with 10,000 tenants each calling every few seconds, a
5 s TTL missed on nearly every call, and each miss was a query on the owner's
small pool (bench/bench_tenants.py: p99 1.8x that of 10 tenants).
`auth_cache_max_age_seconds` still re-reads an entry now and then, whatever
was announced (a change no trigger announced: SQL by hand on a table without one).
"""

from __future__ import annotations

import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from sqlalchemy import false, func, literal, literal_column, select
from sqlalchemy.exc import DBAPIError

from tenantry.auth.api_keys import hash_key, looks_like_api_key
from tenantry.auth.issuers import ExternalIdentity, TenantIssuers
from tenantry.auth.jwt import ALGORITHM, CANARY_PREFIX, TenantToken, decode_canary_token, decode_tenant_token
from tenantry.db.engine import Database
from tenantry.db.models import api_keys, tenants
from tenantry.errors import Forbidden, Unauthenticated, Unavailable
from tenantry.plans import Limits, PlanBook
from tenantry.settings import Settings
from tenantry.tenancy import Principal, TenantStatus

_MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class _KeyState:
    tenant_id: uuid.UUID
    key_id: uuid.UUID
    revoked: bool
    tenant_status: str
    plan: str
    limits: Limits
    subject: str
    roles: frozenset[str]
    tools: tuple[str, ...] | None
    loaded_at: float
    trusted_until: float  # past this, read again even while changes are announced (jittered: no stampede)


_QUERY = select(
    api_keys.c.tenant_id,
    api_keys.c.id,
    api_keys.c.revoked_at.is_not(None),
    tenants.c.status,
    tenants.c.plan,
    tenants.c.limits,
    func.coalesce(api_keys.c.subject, api_keys.c.name),
    api_keys.c.roles,
    api_keys.c.tools,
).join(tenants, tenants.c.id == api_keys.c.tenant_id)
# A tenant alone (for tokens of its own identity provider, which name no key): shaped like _QUERY.
_TENANT_QUERY = select(
    tenants.c.id,
    tenants.c.id,
    false(),
    tenants.c.status,
    tenants.c.plan,
    tenants.c.limits,
    literal(""),
    literal_column("'{}'::text[]"),
    literal_column("NULL::text[]"),
)


class CredentialResolver:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        plans: PlanBook,
        *,
        issuers: TenantIssuers | None = None,
        announced: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = _MAX_ENTRIES,
    ) -> None:
        """`announced()`: whether every change of a key or a tenant reaches `forget` now (the change
        listener holds its connection); while it does, cached entries outlive the TTL. At most
        `max_entries` credentials are cached (the least recently used go first)."""
        self._settings = settings
        self._clock = clock
        self._max_entries = max_entries
        self._announced = announced
        self._max_age = settings.auth_cache_max_age_seconds
        self._issuers = issuers
        self._db = db
        self._plans = plans
        self._ttl = settings.auth_cache_ttl_seconds
        # Keyed by key hash (API keys) or by key id (JWTs, which name their key).
        self._cache: OrderedDict[bytes | uuid.UUID, _KeyState] = OrderedDict()
        self._by_tenant: dict[uuid.UUID, set[bytes | uuid.UUID]] = {}
        # Bumped by every forget(): a lookup that read the database before a change was forgotten does not
        # cache what it read (it may be the state the change replaced).
        self._generation = 0

    def forget(self, tenant_id: uuid.UUID | None = None) -> None:
        """Forget the cached credentials of `tenant_id` (None: of every tenant)."""
        self._generation += 1
        if tenant_id is None:
            self._cache.clear()
            self._by_tenant.clear()
            return
        for key in self._by_tenant.pop(tenant_id, ()):
            self._cache.pop(key, None)

    def sizes(self) -> dict[str, int]:
        """How many credentials are cached, and of how many tenants (both bounded by `max_entries`)."""
        return {"credentials": len(self._cache), "tenants": len(self._by_tenant)}

    def _untrack(self, tenant_id: uuid.UUID, cache_key: bytes | uuid.UUID) -> None:
        """Drop `cache_key` from its tenant's set, and the set when it is empty (tenants come and go)."""
        keys = self._by_tenant.get(tenant_id)
        if keys is not None:
            keys.discard(cache_key)
            if not keys:
                del self._by_tenant[tenant_id]

    async def resolve(self, token: str, tenant: uuid.UUID | None = None) -> Principal:
        """The principal `token` stands for; 401 if it stands for nobody, 403 if its tenant may not call.
        `tenant` (the request's Tenant-ID) says whose identity provider a token of another issuer is from."""
        claimed: TenantToken | None = None
        external: ExternalIdentity | None = None
        if looks_like_api_key(token):
            digest = hash_key(token)
            state = await self._lookup(digest, lambda: api_keys.c.key_hash == digest)
            via = "api_key"
        elif token.startswith(CANARY_PREFIX):
            tenant_id, key_id = decode_canary_token(self._settings, token)
            state = await self._lookup(key_id, lambda: api_keys.c.id == key_id)
            if state is not None and state.tenant_id != tenant_id:
                state = None
            via = "canary"
        elif self._issuers is not None and _foreign(token):
            if tenant is None:
                raise Unauthenticated(
                    "a token of a tenant's own identity provider needs the Tenant-ID header", code="missing_tenant_id"
                )
            external = await self._issuers.verify(tenant, token)
            state = await self._lookup(b"tenant:" + tenant.bytes, lambda: tenants.c.id == tenant, _TENANT_QUERY)
            via = "idp"
        else:
            claimed = decode_tenant_token(self._settings, token)
            key_id = claimed.key_id
            state = await self._lookup(key_id, lambda: api_keys.c.id == key_id)
            if state is not None and state.tenant_id != claimed.tenant_id:
                state = None
            via = "jwt"
        if state is None:
            raise Unauthenticated("unknown credential", code="invalid_credentials")
        # Status first: a deprovisioned tenant (whose keys were revoked with it) is told it is deprovisioned.
        # A tenant being onboarded is admitted only for the canary the gateway itself runs.
        provisioning_canary = via == "canary" and state.tenant_status == TenantStatus.PROVISIONING
        if state.tenant_status != TenantStatus.ACTIVE and not provisioning_canary:
            raise Forbidden(f"tenant is {state.tenant_status}", code=f"tenant_{state.tenant_status}")
        if state.revoked:
            raise Unauthenticated("credential revoked", code="credential_revoked")
        key_id, subject, roles, claims, tools = state.key_id, state.subject, state.roles, {}, state.tools
        if external is not None:  # the tenant's own issuer says who calls; it has no key and no tool scope
            key_id, subject, roles, claims, tools = (
                external.issuer.key_id,
                external.subject,
                external.roles,
                external.claims,
                None,
            )
        elif claimed is not None:  # a token narrows (or, minted by an admin, sets) what its key carries
            subject = subject if claimed.subject is None else claimed.subject
            roles = roles if claimed.roles is None else claimed.roles
            claims = claimed.claims
            tools = tools if claimed.tools is None else claimed.tools
        return Principal(state.tenant_id, key_id, state.plan, via, state.limits, subject, roles, claims, tools=tools)

    async def _lookup(
        self, cache_key: bytes | uuid.UUID, where: Callable[[], Any], query: Any = _QUERY
    ) -> _KeyState | None:
        """The cached state of a credential, or read it (`where()` builds the clause only on a miss)."""
        now = self._clock()
        state = self._cache.get(cache_key)
        if state is not None and (
            now - state.loaded_at < self._ttl or (now < state.trusted_until and self._announced())
        ):
            self._cache.move_to_end(cache_key)
            return state
        generation = self._generation
        try:
            async with self._db.system() as conn:
                row = (await conn.execute(query.where(where()))).one_or_none()
        except (DBAPIError, OSError):
            # Nobody can tell whether the credential is good: a clear, retryable 503, not a 500.
            raise Unavailable(
                "the credential cannot be checked: the database is unavailable; retry later", code="auth_unavailable"
            ) from None
        if row is None:
            gone = self._cache.pop(cache_key, None)
            if gone is not None:
                self._untrack(gone.tenant_id, cache_key)
            return None
        limits = self._plans.limits(row[4], row[5])
        tools = None if row[8] is None else tuple(row[8])
        trusted_until = now + self._max_age * random.uniform(0.75, 1.0)  # noqa: S311 (spread, not secrecy)
        state = _KeyState(
            row[0], row[1], bool(row[2]), row[3], row[4], limits, row[6], frozenset(row[7]), tools, now, trusted_until
        )
        if self._ttl > 0 and generation == self._generation:
            self._cache[cache_key] = state
            self._cache.move_to_end(cache_key)
            self._by_tenant.setdefault(state.tenant_id, set()).add(cache_key)
            if len(self._cache) > self._max_entries:
                oldest, evicted = self._cache.popitem(last=False)
                self._untrack(evicted.tenant_id, oldest)
        return state


def _foreign(token: str) -> bool:
    """Whether a JWT is not one this gateway signs (its tokens are HS256): a tenant's own issuer's."""
    try:
        return bool(jwt.get_unverified_header(token).get("alg") != ALGORITHM)
    except jwt.InvalidTokenError:
        return False  # decode_tenant_token says what is wrong with it
