"""The kill switch: stop a session, a key, a subject, a tool (of one tenant or of all) or a tenant.

A kill is a row of `kills` (migration 0008) until an admin lifts it. Every
gateway holds the live ones in memory (`KillSwitch`), so checking a call costs
a few set lookups, none at all while nothing is killed. A kill or a lift,
made anywhere, is announced on `tenantry_kills`; each replica reloads the
live kills (a few rows) and cancels the calls in flight that a new kill
covers: the upstream request is aborted, the agent told `killed`, and the
call, which returned no result, is recorded unbilled. The process that made
the change reloads before answering; the others within about a second; a
periodic reload bounds staleness while the announcement cannot arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.db.engine import Database
from tenantry.db.listener import ChangeListener, Subscription
from tenantry.db.models import kills
from tenantry.errors import Conflict, Forbidden, NotFound
from tenantry.tenancy import Principal

log = logging.getLogger(__name__)

CHANNEL: Final = "tenantry_kills"
Scope = Literal["session", "key", "subject", "tool", "tenant"]
SCOPES: Final = ("session", "key", "subject", "tool", "tenant")


@dataclass(frozen=True, slots=True)
class Kill:
    id: uuid.UUID
    applies_to: uuid.UUID | None  # the tenant; None: a tool of every tenant
    scope: str
    target: str
    reason: str
    created_at: datetime
    lifted_at: datetime | None

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "tenant_id": str(self.applies_to) if self.applies_to else None,
            "scope": self.scope,
            "target": self.target,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
            "lifted_at": self.lifted_at.isoformat() if self.lifted_at else None,
        }

    def refusal(self) -> Forbidden:
        what = f"this {self.scope}" if self.scope != "tool" else f"the tool {self.target!r}"
        because = f": {self.reason}" if self.reason else ""
        return Forbidden(
            f"{what} was stopped by an administrator{because}", code="killed", extra={"kill": str(self.id)}
        )


_COLUMNS = (
    kills.c.id,
    kills.c.applies_to,
    kills.c.scope,
    kills.c.target,
    kills.c.reason,
    kills.c.created_at,
    kills.c.lifted_at,
)


async def create_kill(
    conn: AsyncConnection, applies_to: uuid.UUID | None, scope: str, target: str, reason: str = ""
) -> Kill:
    values = {"applies_to": applies_to, "scope": scope, "target": target, "reason": reason}
    return Kill(*(await conn.execute(insert(kills).values(**values).returning(*_COLUMNS))).one())


async def lift_kill(conn: AsyncConnection, kill_id: uuid.UUID) -> Kill:
    row = (
        await conn.execute(
            update(kills)
            .where(kills.c.id == kill_id, kills.c.lifted_at.is_(None))
            .values(lifted_at=func.now())
            .returning(*_COLUMNS)
        )
    ).one_or_none()
    if row is not None:
        return Kill(*row)
    found = (await conn.execute(select(*_COLUMNS).where(kills.c.id == kill_id))).one_or_none()
    if found is None:
        raise NotFound(f"no kill {kill_id}", code="kill_not_found")
    raise Conflict(f"kill {kill_id} was already lifted", code="kill_already_lifted")


async def list_kills(conn: AsyncConnection, *, live: bool = True, applies_to: uuid.UUID | None = None) -> list[Kill]:
    query = select(*_COLUMNS).order_by(kills.c.created_at)
    if live:
        query = query.where(kills.c.lifted_at.is_(None))
    if applies_to is not None:
        query = query.where((kills.c.applies_to == applies_to) | kills.c.applies_to.is_(None))
    return [Kill(*row) for row in await conn.execute(query)]


@dataclass(slots=True, eq=False)
class InFlight:
    """A call running its tool; `killed_by` is set when a kill cancelled it."""

    principal: Principal
    tool: str
    task: asyncio.Task[Any] | None
    running: bool = True
    killed_by: Kill | None = field(default=None)


@dataclass(frozen=True, slots=True)
class _Index:
    by_key: dict[tuple[uuid.UUID | None, str, str], Kill]

    def find(self, principal: Principal, tool: str) -> Kill | None:
        tenant, get = principal.tenant_id, self.by_key.get
        return (
            get((tenant, "tenant", str(tenant)))
            or get((tenant, "key", str(principal.key_id)))
            or get((tenant, "subject", principal.subject))
            or (get((tenant, "session", principal.session)) if principal.session else None)
            or get((tenant, "tool", tool))
            or get((None, "tool", tool))
        )


def _index(live: Iterable[Kill]) -> _Index:
    return _Index({(k.applies_to, k.scope, k.target): k for k in live})


class KillSwitch:
    def __init__(self, db: Database, listener: ChangeListener, *, refresh_s: float = 10.0) -> None:
        self._db = db
        self._refresh_s = refresh_s
        self._index = _index(())
        self._running: set[InFlight] = set()
        self._stale = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.loads = 0
        # Told the id of each session newly killed (the gateway ends it on this replica, if it is here).
        self.on_session_kill: list[Callable[[str], Awaitable[None]]] = []
        listener.subscribe(Subscription(CHANNEL, lambda _payload: self._stale.set(), self._stale.set))

    def stops(self, principal: Principal, tool: str = "") -> Kill | None:
        """The live kill that stops `principal` calling `tool` (any kill of it when `tool` is empty)."""
        index = self._index
        return index.find(principal, tool) if index.by_key else None

    @contextlib.contextmanager
    def running(self, principal: Principal, tool: str) -> Any:
        """Around a tool's execution: a kill made meanwhile cancels it (the caller sees `killed_by`)."""
        call = InFlight(principal, tool, asyncio.current_task())
        self._running.add(call)
        try:
            yield call
        finally:
            call.running = False
            self._running.discard(call)

    async def start(self) -> None:
        """Load the live kills (before serving), then keep them current in a task of the running loop."""
        await self.reload()
        self._task = asyncio.create_task(self._keep_current(), name="kill-switch")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self) -> None:
        """Read the live kills; cancel the calls in flight that a kill now covers."""
        async with self._db.system() as conn:
            live = await list_kills(conn)
        before, self._index = self._index, (index := _index(live))
        self.loads += 1
        for call in list(self._running):
            stopping = index.find(call.principal, call.tool) if index.by_key else None
            if stopping is not None and call.running and call.killed_by is None and call.task is not None:
                call.killed_by = stopping
                call.task.cancel(msg="killed")
        sessions = [k.target for key, k in index.by_key.items() if k.scope == "session" and key not in before.by_key]
        for session in sessions:
            for end in self.on_session_kill:
                await end(session)

    async def _keep_current(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh_s):
                    await self._stale.wait()
            self._stale.clear()
            try:
                await self.reload()
            except Exception:  # the database is away: keep the kills we hold, try again
                log.exception("reloading the live kills failed")
                await asyncio.sleep(1.0)
