"""Which agent sessions hear which of their tenant's changes, and the upstream subscriptions behind them.

What upstreams announce (`federation.pool` listeners) reaches the agents of the upstream's own tenant
only, named as the gateway names things:

- `notifications/{tools,prompts,resources}/list_changed` goes to every session of the tenant that has
  used the gateway (handshake protocol versions, on the session's standalone stream: stateful
  streamable HTTP or legacy SSE) and to the tenant's `subscriptions/listen` streams (2026-07-28);
- `notifications/resources/updated` goes to the sessions (and listen streams) subscribed to that
  resource, its URI given its gateway name (`<upstream>+<uri>`); a data-store write through this
  gateway updates its key's resource (`tenantry://data/<key>`) so too. (A write through another
  replica is not heard here: updates are per process.)

An agent's subscription to an upstream resource subscribes the tenant's pooled upstream session
once, however many of the tenant's agents subscribe, and unsubscribes it when the last one leaves
(unsubscribes, or its session ends). Sessions of one tenant never hear another's: every table here
is keyed by tenant first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)
from mcp_types import SubscriptionsListenRequestParams, SubscriptionsListenResult

from tenantry.federation.offerings import UpstreamResource
from tenantry.federation.pool import UpstreamPool
from tenantry.tenancy import Principal
from tenantry.tools import data_resources

log = logging.getLogger(__name__)

# Sessions remembered per tenant, at most (the oldest is forgotten: it hears no more list changes).
_MAX_SESSIONS: Final = 1_000

_LIST_CHANGED: Final[dict[str, tuple[Callable[[ServerSession], Awaitable[None]], ServerEvent]]] = {
    "notifications/tools/list_changed": (ServerSession.send_tool_list_changed, ToolsListChanged()),
    "notifications/prompts/list_changed": (ServerSession.send_prompt_list_changed, PromptsListChanged()),
    "notifications/resources/list_changed": (ServerSession.send_resource_list_changed, ResourcesListChanged()),
}

_DATA_WRITES: Final = frozenset({"data_put", "data_delete"})

Resolve = Callable[[str], Awaitable[UpstreamResource | None]]


class Subscriptions:
    def __init__(self, pool: UpstreamPool | None) -> None:
        self._pool = pool
        self._sessions: dict[uuid.UUID, dict[str, ServerSession]] = {}
        self._tenant_of: dict[str, uuid.UUID] = {}  # session id -> its tenant
        # (tenant, gateway uri) -> the sessions subscribed to it
        self._subscribers: dict[tuple[uuid.UUID, str], set[str]] = {}
        # (tenant, gateway uri) -> (the upstream resource, how many sessions and listen streams want it)
        self._upstream: dict[tuple[uuid.UUID, str], tuple[UpstreamResource, int]] = {}
        # (tenant, upstream id, the upstream's own uri) -> gateway uri
        self._names: dict[tuple[uuid.UUID, uuid.UUID, str], str] = {}
        self._listens: dict[uuid.UUID, tuple[ListenHandler, InMemorySubscriptionBus]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        if pool is not None:
            pool.listeners.append(self._announced)

    def seen(self, tenant_id: uuid.UUID, session_id: str | None, session: ServerSession) -> None:
        """The session `session_id` of the tenant spoke: it hears the tenant's list changes from now on."""
        if session_id is None:
            return
        sessions = self._sessions.setdefault(tenant_id, {})
        sessions.pop(session_id, None)
        sessions[session_id] = session
        self._tenant_of[session_id] = tenant_id
        while len(sessions) > _MAX_SESSIONS:
            self.forget(next(iter(sessions)))

    async def subscribe(
        self, tenant_id: uuid.UUID, session_id: str, session: ServerSession, uri: str, entry: Any
    ) -> None:
        """Session `session_id` hears updates of gateway URI `uri` (`entry`: what reads it)."""
        self.seen(tenant_id, session_id, session)
        subscribers = self._subscribers.setdefault((tenant_id, uri), set())
        if session_id not in subscribers:
            subscribers.add(session_id)
            await self._acquire(tenant_id, uri, entry)

    async def unsubscribe(self, tenant_id: uuid.UUID, session_id: str, uri: str) -> None:
        subscribers = self._subscribers.get((tenant_id, uri))
        if subscribers is None or session_id not in subscribers:
            return
        subscribers.discard(session_id)
        if not subscribers:
            del self._subscribers[(tenant_id, uri)]
        await self._release(tenant_id, uri)

    def forget(self, session_id: str) -> None:
        """The session ended: it hears nothing more, and what only it wanted upstream is unsubscribed."""
        tenant_id = self._tenant_of.pop(session_id, None)
        if tenant_id is None:
            return
        sessions = self._sessions.get(tenant_id, {})
        sessions.pop(session_id, None)
        if not sessions:
            self._sessions.pop(tenant_id, None)
        for key in [k for k, ids in self._subscribers.items() if k[0] == tenant_id and session_id in ids]:
            self._spawn(self.unsubscribe(key[0], session_id, key[1]))

    async def listen(
        self,
        tenant_id: uuid.UUID,
        ctx: ServerRequestContext[Any, Any],
        params: SubscriptionsListenRequestParams,
        resolve: Resolve,
    ) -> SubscriptionsListenResult:
        """Serve a `subscriptions/listen` stream (2026-07-28) on the tenant's own bus. Its resource
        URIs are resolved with `resolve` (what the caller may read); the rest are never announced."""
        found = self._listens.get(tenant_id)
        if found is None:
            bus = InMemorySubscriptionBus()
            found = self._listens[tenant_id] = (ListenHandler(bus), bus)
        held = []
        for uri in params.notifications.resource_subscriptions or ():
            entry = await resolve(uri)
            if entry is not None:
                await self._acquire(tenant_id, uri, entry)
                held.append(uri)
        try:
            return await found[0](ctx, params)
        finally:
            for uri in held:
                await asyncio.shield(self._release(tenant_id, uri))

    async def _acquire(self, tenant_id: uuid.UUID, uri: str, entry: Any) -> None:
        if not isinstance(entry, UpstreamResource) or self._pool is None:
            return  # a built-in resource: nothing to subscribe to upstream
        known = self._upstream.get((tenant_id, uri))
        self._upstream[(tenant_id, uri)] = (entry, (known[1] if known else 0) + 1)
        self._names[(tenant_id, entry.upstream.id, entry.uri)] = uri
        if known is None:
            await self._pool.subscribe(entry.upstream, entry.uri)

    async def _release(self, tenant_id: uuid.UUID, uri: str) -> None:
        known = self._upstream.get((tenant_id, uri))
        if known is None or self._pool is None:
            return
        entry, count = known
        if count > 1:
            self._upstream[(tenant_id, uri)] = (entry, count - 1)
            return
        del self._upstream[(tenant_id, uri)]
        self._names.pop((tenant_id, entry.upstream.id, entry.uri), None)
        with contextlib.suppress(Exception):  # the upstream may be gone; the gateway no longer listens anyway
            await self._pool.subscribe(entry.upstream, entry.uri, on=False)

    def _announced(self, tenant_id: uuid.UUID, upstream_id: uuid.UUID, method: str, params: dict[str, Any]) -> None:
        if method in _LIST_CHANGED:
            send, event = _LIST_CHANGED[method]
            sessions = list(self._sessions.get(tenant_id, {}).items())
            self._spawn(self._deliver(tenant_id, sessions, send, event))
        elif method == "notifications/resources/updated" and isinstance(params.get("uri"), str):
            uri = self._names.get((tenant_id, upstream_id, params["uri"]))
            if uri is not None:
                self.updated(tenant_id, uri)

    def written(self, principal: Principal, tool: str, args: Any) -> None:
        """A call ended ok (`ToolCalls.observers`): a data-store write updates its key's resource."""
        if tool in _DATA_WRITES and principal.tenant_id in self._sessions:
            self.updated(principal.tenant_id, data_resources.uri_of(args.key))

    def updated(self, tenant_id: uuid.UUID, uri: str) -> None:
        """Tell the tenant's subscribers that the resource at gateway URI `uri` changed."""
        known = self._sessions.get(tenant_id, {})
        ids = self._subscribers.get((tenant_id, uri))
        listen = self._listens.get(tenant_id)
        if not ids and listen is None:
            return
        sessions = [(sid, known[sid]) for sid in ids or () if sid in known]

        async def send(session: ServerSession) -> None:
            await session.send_resource_updated(uri)

        self._spawn(self._deliver(tenant_id, sessions, send, ResourceUpdated(uri=uri)))

    async def _deliver(
        self,
        tenant_id: uuid.UUID,
        sessions: list[tuple[str, ServerSession]],
        send: Callable[[ServerSession], Awaitable[None]],
        event: ServerEvent,
    ) -> None:
        for session_id, session in sessions:
            try:
                await send(session)
            except Exception as exc:  # a session that went away hears nothing more
                log.debug("notifying session %s failed: %s", session_id[:64], type(exc).__name__)
                self.forget(session_id)
        listen = self._listens.get(tenant_id)
        if listen is not None:
            await listen[1].publish(event)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for handler, _ in self._listens.values():
            handler.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
