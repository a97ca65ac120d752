"""Listen for changes to tenants' upstreams, wherever they are made, and drop what they make stale.

Migration 0005 puts triggers on `upstreams`, `upstream_tool_pins` and
`tenants` that `pg_notify` this channel at commit with `<tenant_id>:<upstream_id>`
(one upstream) or `<tenant_id>:*` (all of a tenant's). One dedicated asyncpg
connection per gateway process LISTENs (on the owner's URL: LISTEN is not
tenant-scoped, and the app role's pool must not lose a connection to it);
each notification invalidates that part of the discovery cache at once and
closes the matching pooled upstream sessions, so a removed upstream, a
changed URL or rotated credentials take effect on the next call, whether the
change came from this process, another replica, or the CLI.

The listener is an optimisation of freshness, never a condition of
correctness: while it is down, the discovery TTL still bounds staleness.
A lost connection is retried at once, then with capped, jittered backoff;
on every (re)connection the whole discovery cache is dropped, because
changes committed while nobody listened were announced to nobody. A
keep-alive query every few seconds notices a connection that died silently.
Payloads that do not parse are logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from tenantry.federation.discovery import Discovery
from tenantry.settings import Settings

log = logging.getLogger(__name__)

# The channel migration 0005's triggers notify on.
CHANNEL = "tenantry_upstream_changes"
# How ops (and tests) find the listener's backend in pg_stat_activity.
APPLICATION_NAME = "tenantry-upstream-changes"
_CONNECT_TIMEOUT_S = 5.0
_KEEPALIVE_S = 5.0
_MAX_BACKOFF_S = 30.0
# A connection held this long is taken to have worked: when it is lost, reconnect without waiting.
_STEADY_S = 1.0


@dataclass(frozen=True, slots=True)
class Change:
    tenant_id: uuid.UUID
    # None: every upstream of the tenant.
    upstream_id: uuid.UUID | None


def parse_payload(payload: str) -> Change:
    """`<tenant_id>:<upstream_id>` or `<tenant_id>:*`; ValueError for anything else."""
    tenant, sep, upstream = payload.partition(":")
    if not sep:
        raise ValueError("no ':' in the payload")
    return Change(uuid.UUID(tenant), None if upstream == "*" else uuid.UUID(upstream))


def listener_dsn(database_url: str) -> str:
    """The SQLAlchemy URL (`postgresql+asyncpg://...`) as a DSN asyncpg accepts."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class UpstreamChanges:
    def __init__(self, settings: Settings, discovery: Discovery, *, keepalive_s: float = _KEEPALIVE_S) -> None:
        self._dsn = listener_dsn(settings.database_url)
        self._discovery = discovery
        self._keepalive_s = keepalive_s
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.Queue[Change] | None = None
        self.listening = False
        self.connects = 0
        self.notifications = 0
        self.ignored = 0
        self.last_error: str | None = None

    def start(self) -> None:
        """Listen in a background task of the running loop until `aclose()`."""
        self._pending = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="upstream-changes")

    async def aclose(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def check(self) -> dict[str, Any]:
        """For `/health`: always ok (the TTL still bounds staleness), with the state to alert on."""
        check: dict[str, Any] = {
            "status": "ok",
            "listening": self.listening,
            "connects": self.connects,
            "notifications": self.notifications,
            "ignored": self.ignored,
        }
        if not self.listening:
            ttl = self._discovery.ttl_seconds
            check["detail"] = f"not listening; changes made elsewhere are seen within the {ttl:g}s discovery TTL"
            if self.last_error:
                check["last_error"] = self.last_error
        return check

    async def _run(self) -> None:
        closer = asyncio.create_task(self._close_sessions(), name="upstream-changes-close")
        try:
            await self._listen()
        finally:
            closer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closer

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
        await conn.add_listener(CHANNEL, self._notified)
        self.listening = True
        self.connects += 1
        self.last_error = None
        # Anything committed while no connection listened was announced to nobody.
        self._discovery.invalidate_all()
        log.info("listening for upstream changes (connection %d)", self.connects)
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._keepalive_s):
                    await lost.wait()
            if not lost.is_set():
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    await conn.execute("SELECT 1")
        self.last_error = "connection lost"
        log.warning("upstream change listener lost its connection; reconnecting")

    def _failed(self, step: str, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        log.warning("upstream change listener: %s failed (%s); retrying", step, self.last_error)

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            change = parse_payload(payload)
        except ValueError:
            self.ignored += 1
            log.warning("ignoring an upstream change notification that does not parse: %r", payload[:200])
            return
        self.notifications += 1
        # The cache at once (no await between here and the next request); the sessions in order.
        if change.upstream_id is None:
            self._discovery.invalidate_tenant(change.tenant_id)
        else:
            self._discovery.invalidate(change.tenant_id, change.upstream_id)
        assert self._pending is not None
        self._pending.put_nowait(change)

    async def _close_sessions(self) -> None:
        assert self._pending is not None
        pool = self._discovery.pool
        while True:
            change = await self._pending.get()
            try:
                if change.upstream_id is None:
                    await pool.close_tenant(change.tenant_id)
                else:
                    await pool.close_tenant_upstream(change.tenant_id, change.upstream_id)
            except Exception:  # one session that would not close must not stop the others closing
                log.exception("closing the sessions of tenant %s after a change failed", change.tenant_id)


async def _close(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return
    try:
        async with asyncio.timeout(2):
            await conn.close()
    except Exception:  # a connection that will not close politely is dropped
        conn.terminate()
