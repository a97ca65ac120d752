"""One bounded LRU of per-database engines, for the tenants on the database tier.

Each database-tier tenant's database gets its own small SQLAlchemy engine (pool), opened when the
tenant is first served and kept while it is used. Three bounds keep hundreds of such tenants from
exhausting the server: at most `entries` engines, an engine idle for `idle_seconds` is closed, and
the connections open across all of them stay within `budget` (the least recently used idle engines
are closed to make room; when none is idle the caller gets a retryable `Unavailable`). An engine
with a connection checked out is never closed under its user. `/health` shows `status()`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tenantry.errors import Unavailable


@dataclass(slots=True)
class _Entry:
    engine: AsyncEngine
    used_at: float


def _open_connections(engine: AsyncEngine) -> int:
    pool: Any = engine.pool
    return int(pool.checkedin()) + int(pool.checkedout())


def _busy(engine: AsyncEngine) -> bool:
    pool: Any = engine.pool
    return int(pool.checkedout()) > 0


class EngineCache:
    def __init__(
        self,
        *,
        entries: int,
        idle_seconds: float,
        budget: int,
        pool_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # Each engine may open `pool_size` connections: the budget caps how many engines may be open.
        self._max_entries = max(1, min(entries, budget // pool_size))
        self._idle_seconds = idle_seconds
        self._budget = budget
        self._pool_size = pool_size
        self._clock = clock
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0
        self.evictions = 0

    def engine(self, url: str) -> AsyncEngine:
        """The engine for `url` (an application-role URL), opened if needed."""
        now = self._clock()
        entry = self._entries.get(url)
        if entry is not None:
            entry.used_at = now
            self._entries.move_to_end(url)
            return entry.engine
        self._sweep(now)
        self._make_room()
        engine = create_async_engine(url, pool_size=self._pool_size, max_overflow=0, pool_recycle=1800)
        self._entries[url] = _Entry(engine, now)
        self.opened += 1
        return engine

    def _sweep(self, now: float) -> None:
        for url, entry in list(self._entries.items()):
            if now - entry.used_at > self._idle_seconds and not _busy(entry.engine):
                self._evict(url)

    def _make_room(self) -> None:
        """Close idle engines, least recently used first, until one more fits."""
        for url, entry in list(self._entries.items()):
            if len(self._entries) < self._max_entries:
                return
            if not _busy(entry.engine):
                self._evict(url)
        if len(self._entries) >= self._max_entries:
            raise Unavailable(
                "every tenant database pool is busy; retry shortly",
                code="database_pools_busy",
                extra={"retry_after_ms": 1000},
            )

    def _evict(self, url: str) -> None:
        entry = self._entries.pop(url)
        self.evictions += 1
        task = asyncio.get_running_loop().create_task(entry.engine.dispose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def discard(self, url: str) -> None:
        """Close the engine for `url` if one is open (its database is being dropped)."""
        if url in self._entries:
            self._evict(url)

    def connections(self) -> int:
        return sum(_open_connections(e.engine) for e in self._entries.values())

    def status(self) -> dict[str, Any]:
        return {
            "open_pools": len(self._entries),
            "connections": self.connections(),
            "budget": self._budget,
            "max_pools": self._max_entries,
            "opened": self.opened,
            "evictions": self.evictions,
        }

    async def dispose(self) -> None:
        engines = [entry.engine for entry in self._entries.values()]
        self._entries.clear()
        for engine in engines:
            await engine.dispose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
