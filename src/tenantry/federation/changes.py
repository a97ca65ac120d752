"""What the database announces about tenants' upstreams, applied to the discovery cache and the pool.

Migration 0005 puts triggers on `upstreams`, `upstream_tool_pins` and
`tenants` that `pg_notify` the channel `tenantry_upstream_changes` at commit
with `<tenant_id>:<upstream_id>` (one upstream) or `<tenant_id>:*` (all of a
tenant's: its status changed). The process's one listener (`db/listener.py`)
hands each payload here: that part of the discovery cache is dropped at once
and the matching pooled upstream sessions are closed (in order, by a task of
their own), so a removed upstream, a changed URL or rotated credentials take
effect on the next call, whether the change came from this process, another
replica, or the CLI.

An optimisation of freshness, never a condition of correctness: while the
listener is down, the discovery TTL still bounds staleness; on every
(re)connection the whole discovery cache is dropped. Payloads that do not
parse are logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from tenantry.db.listener import ChangeListener, Subscription
from tenantry.federation.discovery import Discovery

log = logging.getLogger(__name__)

# The channel migration 0005's triggers notify on.
CHANNEL = "tenantry_upstream_changes"


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


class UpstreamChanges:
    def __init__(self, listener: ChangeListener, discovery: Discovery) -> None:
        self._listener = listener
        self._discovery = discovery
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.Queue[Change] = asyncio.Queue()
        self.notifications = 0
        self.ignored = 0
        listener.subscribe(Subscription(CHANNEL, self._notified, discovery.invalidate_all))

    def start(self) -> None:
        """Close the sessions of announced changes in a background task of the running loop."""
        self._task = asyncio.create_task(self._close_sessions(), name="upstream-changes-close")

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
            **self._listener.state(),
            "notifications": self.notifications,
            "ignored": self.ignored,
        }
        if not self._listener.listening:
            ttl = self._discovery.ttl_seconds
            check["detail"] = f"not listening; changes made elsewhere are seen within the {ttl:g}s discovery TTL"
        return check

    def _notified(self, payload: str) -> None:
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
        self._pending.put_nowait(change)

    async def _close_sessions(self) -> None:
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
