"""The tier router: where a tenant's data plane lives, asked once and then answered from memory.

`Database.tenant(T)` asks `placement(T)`: an in-process dict hit after the first call, so a
shared-tier tenant's hot path costs one `dict.get` more than before tiers existed. A miss reads the
tenant row (owner pool) once. The answer is forgotten whenever the tenant row changes: at commit in
this process (`note_tenant_changed`) and on `tenants.CHANNEL` from every other one (migration 0014
makes the tenant trigger fire on placement changes too), and wholesale when the listener reconnects.

What the router may be trusted for: which engine and namespace hold a tenant's data *now*. While a
move runs (`moving_since`) or a copy lags the tier DDL (`placement_revision` < `tier_schema.HEAD`),
it refuses with a retryable `Unavailable` rather than guess. A call that finds its tenant moving may
first wait (`wait_for_move`, at most `TIER_MOVE_HOLD_MS`) for the forget that the move's switch
causes: woken by it, not polling, so a short move costs a call a pause instead of a 503.

A database-tier tenant on another server is reached as its own login role there (made by
provisioning, its password sealed with the tenant's other placement secrets), never with the
gateway's own application password: that one is only ever sent to the gateway's own server.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.db import tier_schema
from tenantry.db.engines import EngineCache
from tenantry.errors import Unavailable
from tenantry.secrets import SecretBox
from tenantry.settings import Settings

SHARED, SCHEMA, DATABASE = "shared", "schema", "database"
TIERS = (SHARED, SCHEMA, DATABASE)


@dataclass(frozen=True, slots=True)
class Placement:
    tier: str
    name: str | None = None  # the schema (schema tier) or database (database tier)
    url: str | None = None  # another server's owner URL, password unsealed; None: the shared server
    revision: int = 0
    moving: bool = False
    # Another server: the tenant's own login role there and its password (`logins.ensure_login`).
    app_user: str | None = None
    app_password: str | None = field(default=None, repr=False)


SHARED_PLACEMENT = Placement(SHARED)
# What a write to a moved tenant's fenced old copy fails with (`tier_schema.STORAGE_FENCE_FUNCTION`).
MOVED_SQLSTATE = "TNMOV"


def tenant_moving() -> Unavailable:
    return Unavailable(
        "this tenant is moving between isolation tiers; retry shortly",
        code="tenant_moving",
        extra={"retry_after_ms": 1000},
    )


_LOAD = text(
    """
    SELECT placement, placement_name, placement_url, placement_secret, placement_revision,
           moving_since IS NOT NULL AS moving
    FROM tenants WHERE id = :id
    """
)


def schema_name(tenant_id: uuid.UUID) -> str:
    return f"tenant_{tenant_id.hex}"


def database_name(shared_database: str, tenant_id: uuid.UUID) -> str:
    """Named after the shared database, so two deployments (or test runs) on one server never collide."""
    suffix = f"_t_{tenant_id.hex}"
    return shared_database[: 63 - len(suffix)] + suffix


def unseal_placement(secrets: SecretBox, row: Any, *, moving: bool = False) -> Placement:
    """The placement a tenant row names (its `placement*` columns), its sealed passwords opened."""
    if not row.placement_url:
        return Placement(row.placement, row.placement_name, None, row.placement_revision, moving)
    sealed: dict[str, Any] = secrets.open(row.placement_secret) if row.placement_secret else {}
    url = make_url(row.placement_url).set(password=sealed.get("password") or None)
    return Placement(
        row.placement,
        row.placement_name,
        url.render_as_string(hide_password=False),
        row.placement_revision,
        moving,
        app_user=sealed.get("app_user"),
        app_password=sealed.get("app_password"),
    )


class Router:
    def __init__(self, settings: Settings, system_engine: AsyncEngine) -> None:
        self._settings = settings
        self._system = system_engine
        self._secrets = SecretBox(settings.secret_keys)
        self._placements: dict[uuid.UUID, Placement] = {}
        self._generation = 0
        # Set (and dropped) when a tenant is forgotten: what calls held by a move wait on.
        self._changed: dict[uuid.UUID, asyncio.Event] = {}
        self.loads = 0
        self.engines = EngineCache(
            entries=settings.tier_pool_entries,
            idle_seconds=settings.tier_pool_idle_seconds,
            budget=settings.tier_connection_budget,
            pool_size=settings.tier_pool_size,
        )

    def cached(self, tenant_id: uuid.UUID) -> Placement | None:
        return self._placements.get(tenant_id)

    async def placement(self, tenant_id: uuid.UUID) -> Placement:
        found = self._placements.get(tenant_id)
        if found is not None:
            return found
        generation = self._generation
        async with self._system.connect() as conn:
            row = (await conn.execute(_LOAD, {"id": tenant_id})).one_or_none()
        self.loads += 1
        if row is None:  # no such tenant: shared, where RLS shows it nothing; not cached (unbounded ids)
            return SHARED_PLACEMENT
        found = unseal_placement(self._secrets, row, moving=row.moving)
        # A change committed while this read ran must not be overwritten by what the read saw.
        if generation == self._generation:
            if len(self._placements) > 100_000:
                self._placements.clear()
            self._placements[tenant_id] = found
        return found

    def forget(self, tenant_id: uuid.UUID | None) -> None:
        self._generation += 1
        if tenant_id is None:
            self._placements.clear()
            waiting, self._changed = list(self._changed.values()), {}
        else:
            self._placements.pop(tenant_id, None)
            event = self._changed.pop(tenant_id, None)
            waiting = [event] if event is not None else []
        for event in waiting:
            event.set()

    async def wait_for_move(self, tenant_id: uuid.UUID, hold_seconds: float) -> Placement:
        """The tenant's placement once its move ended, or still moving after `hold_seconds`. Woken by
        `forget` (the switch's change of the tenant row, heard at commit or on the channel)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold_seconds
        while True:
            # Registered before the read: a forget between the two sets this event, so it is not missed.
            event = self._changed.setdefault(tenant_id, asyncio.Event())
            found = await self.placement(tenant_id)
            if not found.moving:
                if self._changed.get(tenant_id) is event:  # nothing left to wait for: any other waiter re-checks
                    del self._changed[tenant_id]
                    event.set()
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                return found
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return found

    def check(self, placement: Placement) -> None:
        """Refuse, retryably, a placement that cannot be served right now."""
        if placement.moving:
            raise tenant_moving()
        if placement.tier != SHARED and placement.revision < tier_schema.HEAD:
            raise Unavailable(
                f"this tenant's tables are on revision {placement.revision}, the gateway needs "
                f"{tier_schema.HEAD}: run `tenantry migrate`; retry shortly",
                code="tenant_not_migrated",
                extra={"retry_after_ms": 5000},
            )

    def owner_url(self, placement: Placement) -> str:
        """The owner's URL of the database holding `placement` (the shared one for shared and schema)."""
        if placement.tier != DATABASE:
            return self._settings.owner_database_url
        if placement.url:
            return placement.url
        url = make_url(self._settings.owner_database_url).set(database=placement.name)
        return url.render_as_string(hide_password=False)

    def app_url(self, placement: Placement) -> str:
        """The application role's URL of the database holding a database-tier `placement`: on the
        gateway's own server, the gateway's application role; on another server, the tenant's login
        role there (a copy provisioned before such logins existed gets no password at all: the
        gateway's own is never sent to another server; `tenantry tenant move` to it again resets one)."""
        if not placement.url:
            url = make_url(self._settings.app_database_url).set(database=placement.name)
            return url.render_as_string(hide_password=False)
        user = placement.app_user or self._settings.db_app_role
        # `_replace`, not `set` (which keeps the owner's password when given None).
        url = make_url(placement.url)._replace(username=user, password=placement.app_password)
        return url.render_as_string(hide_password=False)

    def engine(self, placement: Placement) -> AsyncEngine:
        return self.engines.engine(self.app_url(placement))

    def status(self) -> dict[str, object]:
        return {
            "placements_cached": len(self._placements),
            "loads": self.loads,
            "moves_awaited": len(self._changed),  # tenants whose calls are held, waiting for a move to end
            **self.engines.status(),
        }

    async def dispose(self) -> None:
        await self.engines.dispose()
