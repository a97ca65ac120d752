"""One LISTEN connection per process: what the database announces, handed to whoever subscribed.

Triggers in the migrations `pg_notify` at commit whenever something other
processes cache changes (a tenant's status, plan or limits, a key revoked, an
upstream). Each subscriber names a channel, a function for each payload and
a function for "announcements may have been missed" (every (re)connection:
changes committed while nobody listened were announced to nobody), so a
change made anywhere (another replica, the CLI, SQL by hand) reaches every
replica's caches within about a second.

The listener is an optimisation of freshness, never a condition of
correctness: while it is down, each cache's own TTL still bounds staleness.
It connects on the owner's direct URL (LISTEN is not tenant-scoped, the app
role's pool must not lose a connection to it, and a transaction pooler would
hand its server connection to others and their notifications to nobody), retries a lost connection at
once and then with capped, jittered backoff, and runs a keep-alive query
every few seconds to notice a connection that died silently. A subscriber
that raises is logged; the others still hear of the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

# How ops (and tests) find the listener's backend in pg_stat_activity.
APPLICATION_NAME = "tenantry-change-listener"
_CONNECT_TIMEOUT_S = 5.0
_KEEPALIVE_S = 5.0
_MAX_BACKOFF_S = 30.0
# A connection held this long is taken to have worked: when it is lost, reconnect without waiting.
_STEADY_S = 1.0


@dataclass(frozen=True, slots=True)
class Subscription:
    channel: str
    notified: Callable[[str], None]  # one payload; runs on the event loop, must not block
    reconnected: Callable[[], None]  # announcements may have been missed: drop what they would have said


def listener_dsn(database_url: str) -> str:
    """The SQLAlchemy URL (`postgresql+asyncpg://...`) as a DSN asyncpg accepts."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    def __init__(self, database_url: str, *, keepalive_s: float = _KEEPALIVE_S) -> None:
        self._dsn = listener_dsn(database_url)
        self._keepalive_s = keepalive_s
        self._subscriptions: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self.listening = False
        self.connects = 0
        self.notifications = 0
        self.last_error: str | None = None

    def subscribe(self, subscription: Subscription) -> None:
        """Before `start()`: every channel is listened to on the one connection."""
        self._subscriptions.append(subscription)

    @property
    def channels(self) -> list[str]:
        return sorted({s.channel for s in self._subscriptions})

    def start(self) -> None:
        """Listen in a background task of the running loop until `aclose()`."""
        self._task = asyncio.create_task(self._listen(), name="change-listener")

    async def aclose(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def state(self) -> dict[str, Any]:
        """For `/health`."""
        state: dict[str, Any] = {
            "listening": self.listening,
            "channels": self.channels,
            "connects": self.connects,
            "notifications": self.notifications,
        }
        if not self.listening and self.last_error:
            state["last_error"] = self.last_error
        return state

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while True:
            if backoff:
                # Jitter, so replicas do not all reconnect in step after a restart of PostgreSQL.
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311
            try:
                conn: asyncpg.Connection = await asyncpg.connect(
                    self._dsn, timeout=_CONNECT_TIMEOUT_S, server_settings={"application_name": APPLICATION_NAME}
                )
            except Exception as exc:  # whatever stops a connection, the listener retries
                backoff = min(max(backoff * 2, 0.25), _MAX_BACKOFF_S)
                self._failed("connect", exc)
                continue
            connected_at = loop.time()
            try:
                await self._hold(conn)
            except Exception as exc:  # a lost connection is retried; the gateway keeps serving meanwhile
                self._failed("listen", exc)
            finally:
                self.listening = False
                await _close(conn)
            # A connection that lasted is retried at once; one lost as soon as it was made, with backoff.
            held = loop.time() - connected_at
            backoff = 0.0 if held >= _STEADY_S else min(max(backoff * 2, 0.25), _MAX_BACKOFF_S)

    async def _hold(self, conn: asyncpg.Connection) -> None:
        """LISTEN on `conn` until it is lost."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        for channel in self.channels:
            await conn.add_listener(channel, self._notified)
        self.listening = True
        self.connects += 1
        self.last_error = None
        for subscription in self._subscriptions:
            self._deliver(subscription.reconnected)
        log.info("listening for changes on %s (connection %d)", ", ".join(self.channels), self.connects)
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._keepalive_s):
                    await lost.wait()
            if not lost.is_set():
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    await conn.execute("SELECT 1")
        self.last_error = "connection lost"
        log.warning("change listener lost its connection; reconnecting")

    def _failed(self, step: str, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        log.warning("change listener: %s failed (%s); retrying", step, self.last_error)

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        for subscription in self._subscriptions:
            if subscription.channel == channel:
                self._deliver(subscription.notified, payload)

    @staticmethod
    def _deliver(fn: Callable[..., None], *args: str) -> None:
        try:
            fn(*args)
        except Exception:  # one subscriber's bug must not keep the change from the others
            log.exception("a change subscriber failed")


async def _close(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return
    try:
        async with asyncio.timeout(2):
            await conn.close()
    except Exception:  # a connection that will not close politely is dropped
        conn.terminate()
