"""Pooled MCP client sessions to tenants' upstream servers, each behind a circuit breaker.

One pool entry per (tenant_id, upstream_id): never shared between tenants,
even when two tenants name the same URL, because each carries its own
credential. An entry holds one upstream session, built once and reused by
every call (no handshake per call; `session.py` says what one is). A background task
owns each session (the SDK's transports are anyio task groups that must be
exited by the task that entered them). The pool is an LRU bounded in size
with an idle TTL; a breaker per key fails fast after repeated failures.
An entry is closed when its upstream's row changes (`close_tenant_upstream`,
called by the admin API and by the change listener in `changes.py`), and
all of a tenant's when the tenant is suspended or offboarded (`close_tenant`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

from tenantry.federation.failures import Breaker, UpstreamError, describe_failure
from tenantry.federation.http1 import Http1Client
from tenantry.federation.link import HttpLink
from tenantry.federation.openapi import OpenApiSession
from tenantry.federation.registry import Upstream
from tenantry.federation.session import SDK_NOTICES, HttpSession, Link, SdkSession
from tenantry.federation.ssrf import check_url
from tenantry.observability import Tracing
from tenantry.secrets import SecretBox
from tenantry.settings import Settings
from tenantry.tls import client_context
from tenantry.tools.base import Relay

log = logging.getLogger(__name__)

Key = tuple[uuid.UUID, uuid.UUID]
Clock = Callable[[], float]
# What an upstream announced (link.NOTICES): (tenant, upstream, method, params).
Notice = Callable[[uuid.UUID, uuid.UUID, str, dict[str, Any]], None]
T = TypeVar("T")


@dataclass
class _Entry:
    upstream: Upstream
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    client: Link | None = None
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None
    last_used: float = 0.0
    # The SDK folds an HTTP 401/403 into a generic JSON-RPC error; this keeps the status.
    last_status: int = 0


class UpstreamPool:
    def __init__(
        self, settings: Settings, box: SecretBox, *, clock: Clock = time.monotonic, tracing: Tracing | None = None
    ) -> None:
        self._settings = settings
        self._tracing = tracing or Tracing()
        self._box = box
        self.clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._breakers: dict[Key, Breaker] = {}
        self._swept_at = clock()
        # Who hears what upstreams announce (discovery: list changes; the gateway: resource updates).
        self.listeners: list[Notice] = []
        # Resources the gateway subscribed to per session, so a new session subscribes to them again.
        self._subscribed: dict[Key, set[str]] = {}

    def breaker(self, key: Key) -> Breaker:
        found = self._breakers.get(key)
        if found is None:
            s = self._settings
            found = Breaker(s.upstream_breaker_failures, s.upstream_breaker_cooldown_seconds, self.clock)
            self._breakers[key] = found
        return found

    def open_sessions(self) -> int:
        return len(self._entries)

    async def list_tools(self, upstream: Upstream) -> list[types.Tool]:
        async def work(client: Link) -> list[types.Tool]:
            return await client.list_tools()

        with self._tracing.span("upstream tools/list", **{"tenantry.upstream": upstream.name}):
            return await self._run(upstream, work)

    async def call_tool(
        self, upstream: Upstream, tool: str, arguments: dict[str, Any], relay: Relay | None = None
    ) -> types.CallToolResult:
        async def work(client: Link) -> types.CallToolResult:
            return await client.call_tool(tool, arguments, relay)

        with self._tracing.span("upstream tools/call", **{"tenantry.upstream": upstream.name, "tenantry.tool": tool}):
            return await self._run(upstream, work)

    async def request(self, upstream: Upstream, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Any other request to the upstream, on the tenant's pooled session (see `Link.request`)."""

        async def work(client: Link) -> dict[str, Any]:
            return await client.request(method, params)

        with self._tracing.span(f"upstream {method}", **{"tenantry.upstream": upstream.name}):
            return await self._run(upstream, work)

    async def capabilities(self, upstream: Upstream) -> dict[str, Any]:
        """What the upstream offers, from the handshake of the tenant's session (opened if need be)."""

        async def work(client: Link) -> dict[str, Any]:
            return client.capabilities

        return await self._run(upstream, work)

    async def subscribe(self, upstream: Upstream, uri: str, *, on: bool = True) -> None:
        """Subscribe to (or, `on=False`, unsubscribe from) the upstream resource `uri` for this tenant;
        remembered, so a session the pool opens later subscribes again."""
        key = (upstream.tenant_id, upstream.id)
        uris = self._subscribed.setdefault(key, set())
        if on:
            uris.add(uri)
        else:
            uris.discard(uri)
        await self.request(upstream, "resources/subscribe" if on else "resources/unsubscribe", {"uri": uri})

    def _announce(self, tenant_id: uuid.UUID, upstream_id: uuid.UUID, method: str, params: Any) -> None:
        for listener in self.listeners:
            try:
                listener(tenant_id, upstream_id, method, params if isinstance(params, dict) else {})
            except Exception:  # one listener's bug must not break the link's reading
                log.exception("a listener of %s from upstream %s failed", method, upstream_id)

    async def _run(self, upstream: Upstream, work: Callable[[Link], Awaitable[T]]) -> T:
        key = (upstream.tenant_id, upstream.id)
        breaker = self.breaker(key)
        if not breaker.allow():
            raise UpstreamError(
                f"upstream {upstream.name!r} is failing; calls are refused until it recovers",
                extra={"upstream": upstream.name, "breaker": "open"},
            )
        entry: _Entry | None = None
        try:
            client = await self._session(upstream)
            entry = self._entries.get(key)
            async with asyncio.timeout(self._settings.upstream_call_timeout_seconds):
                result = await work(client)
        except TimeoutError as exc:
            # The session stays: other calls may be in flight on it, and one slow tool is not a dead link.
            breaker.failure()
            raise UpstreamError(
                f"upstream {upstream.name!r} did not answer within {self._settings.upstream_call_timeout_seconds}s",
                code="upstream_timeout",
                extra={"upstream": upstream.name},
            ) from exc
        except UpstreamError:
            breaker.failure()
            raise
        except MCPError as exc:
            # The SDK reports both a JSON-RPC error the upstream sent (a healthy upstream, a failed
            # tool) and a broken link (connection closed, an HTTP error status) as MCPError.
            if exc.code == types.CONNECTION_CLOSED or (entry is not None and entry.last_status >= 400):
                breaker.failure()
                await self.close(key, entry)
            else:
                breaker.success()
            raise UpstreamError(
                f"upstream {upstream.name!r} answered with an error: {exc.error.message[:200]}",
                code="upstream_error",
                extra={"upstream": upstream.name},
            ) from exc
        except Exception as exc:
            breaker.failure()
            await self.close(key, entry)
            reason, _ = describe_failure(exc)
            log.warning("upstream %s of tenant %s failed: %s", upstream.name, upstream.tenant_id, reason)
            raise UpstreamError(
                f"upstream {upstream.name!r} failed: {reason}", code="upstream_error", extra={"upstream": upstream.name}
            ) from exc
        breaker.success()
        return result

    async def _session(self, upstream: Upstream) -> Link:
        key = (upstream.tenant_id, upstream.id)
        now = self.clock()
        if now - self._swept_at > min(60.0, self._settings.upstream_idle_ttl_seconds):
            # Idle sessions are reaped by the traffic itself, at most once a minute.
            self._swept_at = now
            await self._evict(now, keep=key)
        entry = self._entries.get(key)
        if entry is not None and entry.upstream.updated_at != upstream.updated_at:
            await self.close(key)
            entry = None
        if entry is None:
            # Registered before any await, so concurrent first calls share one session.
            entry = self._entries[key] = _Entry(upstream)
            entry.task = asyncio.create_task(self._own(entry), name=f"upstream-{upstream.name}")
            await self._evict(now, keep=key)
        if key in self._entries:
            self._entries.move_to_end(key)
        entry.last_used = now
        try:
            async with asyncio.timeout(self._settings.upstream_connect_timeout_seconds):
                await entry.ready.wait()
        except TimeoutError as exc:
            await self.close(key, entry)
            raise UpstreamError(f"upstream {upstream.name!r} did not connect in time", code="upstream_timeout") from exc
        if entry.client is None:
            await self.close(key, entry)
            reason, refused = describe_failure(entry.error or RuntimeError("session ended"))
            if entry.last_status in (401, 403):
                reason, refused = f"credentials refused (HTTP {entry.last_status})", True
            raise UpstreamError(
                f"upstream {upstream.name!r} is unreachable: {reason}",
                extra={"upstream": upstream.name, "credentials_refused": refused},
            )
        return entry.client

    async def _own(self, entry: _Entry) -> None:
        """The task that opens, holds and closes one entry's session."""
        upstream = entry.upstream
        headers = self._box.open(upstream.credentials)
        s = self._settings
        tenant_id = upstream.tenant_id

        async def record(response: httpx2.Response) -> None:
            entry.last_status = response.status_code

        async def notice(message: Any) -> None:
            if isinstance(message, SDK_NOTICES):
                params = message.params.model_dump(by_alias=True, mode="json") if message.params else {}
                self._announce(tenant_id, upstream.id, message.method, params)

        try:
            # Checked again at connect time: the name may resolve elsewhere than at registration.
            addresses = await check_url(
                upstream.url, allow_private=s.upstream_allow_private, allow_loopback=s.upstream_allow_loopback
            )
            async with contextlib.AsyncExitStack() as stack:
                if upstream.transport == "openapi":
                    rest = OpenApiSession(upstream, headers, s)
                    stack.push_async_callback(rest.aclose)
                    await rest.start()
                    entry.client = rest
                elif upstream.transport == "sse":

                    def factory(headers: Any = None, timeout: Any = None, auth: Any = None) -> httpx2.AsyncClient:
                        hooks = {"response": [record]}
                        tls = client_context(s.tls_groups)
                        return httpx2.AsyncClient(
                            headers=headers, timeout=timeout, auth=auth, event_hooks=hooks, verify=tls
                        )

                    transport = sse_client(
                        upstream.url,
                        headers=headers,
                        timeout=s.upstream_connect_timeout_seconds,
                        httpx_client_factory=factory,
                    )
                    client = await stack.enter_async_context(
                        Client(transport, mode="legacy", cache=None, message_handler=notice)
                    )
                    entry.client = SdkSession(client)
                else:
                    http = Http1Client(
                        upstream.url,
                        headers,
                        addresses=addresses,
                        connect_timeout=s.upstream_connect_timeout_seconds,
                        max_response_bytes=s.upstream_max_response_bytes,
                        max_idle=s.upstream_max_idle_connections,
                        tls_groups=s.tls_groups,
                    )
                    link = HttpLink(
                        http,
                        on_notification=lambda m: self._announce(tenant_id, upstream.id, m["method"], m.get("params")),
                        trace_headers=self._tracing.trace_headers,
                    )
                    stack.push_async_callback(link.aclose)
                    await link.start()
                    entry.client = HttpSession(link)
                await self._resubscribe(entry.client, (tenant_id, upstream.id))
                entry.ready.set()
                await entry.closing.wait()
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # the session's failure is reported to whoever waits on it
            entry.error = exc
        finally:
            entry.client = None if entry.closing.is_set() or entry.error else entry.client
            entry.ready.set()

    async def _resubscribe(self, client: Link, key: Key) -> None:
        for uri in sorted(self._subscribed.get(key, ())):
            try:
                await client.request("resources/subscribe", {"uri": uri})
            except Exception as exc:  # the session is still good for everything else
                log.warning("resubscribing to a resource of upstream %s failed: %s", key[1], type(exc).__name__)

    async def _evict(self, now: float, keep: Key) -> None:
        idle = self._settings.upstream_idle_ttl_seconds
        for key, entry in list(self._entries.items()):
            if key != keep and now - entry.last_used > idle:
                await self.close(key)
        while len(self._entries) > self._settings.upstream_pool_max_sessions:
            oldest = next(k for k in self._entries if k != keep)
            await self.close(oldest)

    async def close(self, key: Key, only: _Entry | None = None) -> None:
        """Close the session under `key` (only if it is still `only`, when given)."""
        if only is not None and self._entries.get(key) is not only:
            return
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        entry.closing.set()
        if entry.task is not None:
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(entry.task)
            except (TimeoutError, asyncio.CancelledError):
                entry.task.cancel()

    async def close_tenant_upstream(self, tenant_id: uuid.UUID, upstream_id: uuid.UUID) -> None:
        await self.close((tenant_id, upstream_id))
        self._breakers.pop((tenant_id, upstream_id), None)
        self._subscribed.pop((tenant_id, upstream_id), None)

    async def close_tenant(self, tenant_id: uuid.UUID) -> None:
        """Close every session of the tenant (suspended or offboarded: its credentials must not linger)."""
        for key in {k for k in (*self._entries, *self._breakers) if k[0] == tenant_id}:
            await self.close_tenant_upstream(*key)

    async def aclose(self) -> None:
        for key in list(self._entries):
            await self.close(key)
