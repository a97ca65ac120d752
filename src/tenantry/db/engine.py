"""The connection pools and the only two ways to get a transaction.

- `tenant(tenant_id)`: a transaction as the application role with the tenant
  bound by `set_config('tenantry.tenant_id', $1, true)`, on the tenant's data
  plane wherever its tier puts it (`router.py`): the shared pool for a
  shared-tier tenant; the shared pool with `search_path` set to the tenant's
  schema for the schema tier; the pool of the tenant's own database for the
  database tier. Both settings are transaction-local, so neither can leak to
  the next user of the pooled connection (and both are safe under PgBouncer
  transaction pooling). A tenant in the middle of a move is waited for, up
  to `TIER_MOVE_HOLD_MS`, before it is refused with the retryable
  `tenant_moving`. `tenant(tenant_id, plane=CONTROL)` is the same
  binding on the shared tables, for the tenant's control-plane rows (its
  upstreams, policies, usage events), which stay shared in every tier (its
  audit trail is on the data plane: it moves with its tier).
  Every tenant-scoped statement runs in one of the two, where RLS decides
  what exists.
- `system()`: a transaction on the owner's pool, for work that is cross-tenant
  by nature (admin, credential lookup, billing).

Behind a transaction-pooling PgBouncer (`db_transaction_pooler`), a server
connection is ours only until a transaction ends, and the next transaction
of the same client connection may run on another one. So no statement is
prepared by name: asyncpg's named statements would be missing on the next
server (or, named uniquely as SQLAlchemy's PgBouncer recipe suggests, pile up
on the server they were made on, about one per transaction: measured, README
"PgBouncer"). Statements are sent unnamed and parsed again with each
execution, which also serves the drain's one-statement autocommit writes,
where the prepare and the execution are two round trips PgBouncer may route
to two servers. Everything session-scoped stays off the pooled connections:
tenant bindings, `SET LOCAL` and advisory locks are transaction-level, and
LISTEN and migrations use `direct_database_url`.

Both commit when the block exits normally and roll back when it raises:
callers never commit. A system transaction that changed what a tenant's
credentials resolve to (`note_tenant_changed`, called by `tenants.py` and
`auth/api_keys.py`) tells this process at commit (`on_tenant_changed`);
other processes hear it from the database (`tenants.CHANNEL`).
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tenantry.db.provision import owner_transaction
from tenantry.db.router import DATABASE, MOVED_SQLSTATE, SCHEMA, SHARED, Router, tenant_moving
from tenantry.observability import Tracing
from tenantry.settings import Settings

# Which tables a tenant transaction reaches: its data plane (routed by tier) or the shared control plane.
DATA, CONTROL = "data", "control"

# The tenants each open system transaction changed, by its connection object (one per checkout, so a
# note never outlives its transaction; weak, so a connection lost mid-transaction leaves nothing behind).
_changed: weakref.WeakKeyDictionary[AsyncConnection, set[uuid.UUID]] = weakref.WeakKeyDictionary()

_BIND_TENANT = text("SELECT set_config('tenantry.tenant_id', :tenant_id, true)")
# The schema tier: the tenant and its schema in one round trip. The search path names the schema alone,
# so a table missing from it fails loudly instead of falling through to the shared one.
_BIND_TENANT_SCHEMA = text(
    "SELECT set_config('tenantry.tenant_id', :tenant_id, true), set_config('search_path', :schema, true)"
)


async def bind_tenant(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    """Bind `tenant_id` for the rest of `conn`'s transaction (and no longer)."""
    await conn.execute(_BIND_TENANT, {"tenant_id": str(tenant_id)})


# Undefined table, undefined schema, unknown database: what a dropped tier copy answers.
_GONE = frozenset({"42P01", "3F000", "3D000"})


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def note_tenant_changed(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    """This system transaction changes a tenant's status, plan, limits or keys: when it commits,
    `Database.on_tenant_changed` hears of it (a rollback says nothing)."""
    _changed.setdefault(conn, set()).add(tenant_id)


def _unnamed() -> str:
    return ""


def connect_args(settings: Settings) -> dict[str, Any]:
    """The asyncpg connection arguments: none directly to PostgreSQL; behind a transaction pooler, no
    statement cache (asyncpg's or SQLAlchemy's) and unnamed statements."""
    if not settings.db_transaction_pooler:
        return {}
    return {"statement_cache_size": 0, "prepared_statement_cache_size": 0, "prepared_statement_name_func": _unnamed}


class Database:
    def __init__(self, settings: Settings, *, tracing: Tracing | None = None) -> None:
        self.app_role = settings.db_app_role
        self._move_hold_seconds = settings.tier_move_hold_ms / 1000
        self._tracing = tracing or Tracing()
        args = connect_args(settings)
        self.app_engine: AsyncEngine = create_async_engine(
            settings.app_database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_recycle=1800,
            connect_args=args,
        )
        self.system_engine: AsyncEngine = create_async_engine(
            settings.owner_database_url, pool_size=4, max_overflow=4, pool_recycle=1800, connect_args=args
        )
        # New application connections since start: a count that keeps rising under steady load
        # means the pool is too small (overflow connections are opened and closed per checkout).
        self.app_connections_opened = 0
        event.listen(self.app_engine.sync_engine, "connect", self._opened)
        # Called after the commit of each tenant a system transaction changed (the app: the credential
        # cache forgets it; `tenants.watch`).
        self.on_tenant_changed: Callable[[uuid.UUID], None] = lambda tenant_id: None
        self.router = Router(settings, self.system_engine)

    def _opened(self, *_: Any) -> None:
        self.app_connections_opened += 1

    @asynccontextmanager
    async def tenant(self, tenant_id: uuid.UUID, *, plane: str = DATA) -> AsyncIterator[AsyncConnection]:
        with self._tracing.span("db.transaction", **{"db.system": "postgresql", "tenantry.tenant_id": tenant_id}):
            placement = None
            if plane == DATA:
                placement = self.router.cached(tenant_id) or await self.router.placement(tenant_id)
                if placement.tier == SCHEMA or placement.tier == DATABASE or placement.moving:
                    if placement.moving and self._move_hold_seconds:  # a short move: wait it out
                        placement = await self.router.wait_for_move(tenant_id, self._move_hold_seconds)
                    self.router.check(placement)
                    if placement.tier == SHARED:
                        placement = None  # the move ended on the shared tier
                else:
                    placement = None  # shared: today's path, untouched
            try:
                if placement is None:
                    async with self.app_engine.begin() as conn:
                        await bind_tenant(conn, tenant_id)
                        yield conn
                elif placement.tier == SCHEMA:
                    async with self.app_engine.begin() as conn:
                        params = {"tenant_id": str(tenant_id), "schema": placement.name}
                        await conn.execute(_BIND_TENANT_SCHEMA, params)
                        yield conn
                else:
                    async with self.router.engine(placement).begin() as conn:
                        await bind_tenant(conn, tenant_id)
                        yield conn
            except DBAPIError as exc:
                state = _sqlstate(exc)
                if state == MOVED_SQLSTATE:  # the copy was frozen by a move: retry on the new one
                    self.router.forget(tenant_id)
                    raise tenant_moving() from None
                if placement is not None and state in _GONE:
                    # The copy this replica knew is gone (a move's cleanup it has not heard of yet)?
                    self.router.forget(tenant_id)
                    if await self.router.placement(tenant_id) != placement:
                        raise tenant_moving() from None
                raise

    @asynccontextmanager
    async def unbound(self) -> AsyncIterator[AsyncConnection]:
        """The application role with no tenant bound: RLS must show it nothing (health, tests)."""
        async with self.app_engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def system(self) -> AsyncIterator[AsyncConnection]:
        async with self.system_engine.connect() as conn:
            try:
                async with conn.begin():
                    yield conn
            except BaseException:
                _changed.pop(conn, None)  # rolled back: nothing changed
                raise
        for tenant_id in _changed.pop(conn, ()):
            self.router.forget(tenant_id)
            self.on_tenant_changed(tenant_id)

    @asynccontextmanager
    async def system_data(self, tenant_id: uuid.UUID) -> AsyncIterator[AsyncConnection]:
        """The owner's transaction on the tables that hold `tenant_id`'s data plane now (its schema first
        on the search path, or its own database): health's expected counts, provisioning, moves and
        migrations. Never on the hot path (a database-tier tenant's owner connection is opened per call)."""
        placement = await self.router.placement(tenant_id)
        async with owner_transaction(self.system_engine, self.router.owner_url(placement), placement) as conn:
            yield conn

    def pool_status(self) -> dict[str, Any]:
        pool: Any = self.app_engine.pool
        return {
            "size": pool.size(),
            "checked_out": pool.checkedout(),
            "idle": pool.checkedin(),
            "opened": self.app_connections_opened,
            "tiers": self.router.status(),
        }

    async def dispose(self) -> None:
        await self.router.dispose()
        await self.app_engine.dispose()
        await self.system_engine.dispose()
