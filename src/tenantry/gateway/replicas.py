"""Stateful MCP sessions behind a balancer that does not stick: the session id names the replica that owns it.

A stateful session is live objects in one process (the SDK's transport, its streams, its server task),
which no other process can serve. So instead of moving the state, the request goes to it: the replica
that opens a session mints its id as `<replica id>-<random>`, and a replica that gets a request for a
session it does not own forwards it to the owner, whose address it reads from Redis (each replica
keeps `<prefix>:replica:<id>` = its address, refreshed every few seconds, expiring soon after it stops).
Any balancer works in front, round robin or otherwise, and nothing about a session is in Redis but
where its replica is.

When the owner is gone (its address expired, or nothing answers there), the session is gone with it:
the answer is the MCP specification's for an unknown session, 404 with a JSON-RPC error, and the client
opens a new one (through the balancer, on a live replica). A forwarded request is marked, so a replica
never forwards one again: an owner that restarted under the same address answers 404 itself.

The owner authenticates a forwarded request as any other (the client's own headers go with it);
forwarding grants nothing. The address comes only from Redis, written by replicas, never from the
request, so a crafted session id cannot send a request anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Final

import anyio
import httpx2
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantry.observability import REQUEST_SCOPE_KEY, RequestRecord

log = logging.getLogger(__name__)

FORWARDED_HEADER: Final = b"tenantry-forwarded-by"
# Seconds between refreshes of a replica's address, and how long one lives unrefreshed.
REFRESH_SECONDS: Final = 2.0
ADDRESS_TTL_SECONDS: Final = 10
# How long a replica trusts an address it read (the owner's, which changes only if it restarts).
ADDRESS_CACHE_SECONDS: Final = 5.0
_REPLICA_ID = re.compile(r"^[0-9a-f]{12}$")
# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the message's: never passed on.
_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host"}
)
# The SDK's own answer for a session it does not know (the MCP specification's 404), byte for byte.
# What this replica's own edge middleware puts on every answer: the owner's copies are dropped, not doubled.
_ADDED_HERE: Final = frozenset(
    {
        b"x-request-id",
        b"x-content-type-options",
        b"referrer-policy",
        b"x-frame-options",
        b"content-security-policy",
        b"strict-transport-security",
    }
)
SESSION_NOT_FOUND: Final = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Session not found"}}'
_TOO_LARGE: Final = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Request body too large"}}'
_DIRECTORY_DOWN: Final = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"The replica that owns this session cannot be'
    b' looked up now (Redis is unreachable); retry"}}'
)


def new_replica_id() -> str:
    """A replica's id: new at every start, so a restarted process never claims its predecessor's sessions."""
    return secrets.token_hex(6)


def owner_of(session_id: str) -> str | None:
    """The replica id a session id names, or None for an id this gateway did not mint."""
    replica, sep, _ = session_id.partition("-")
    return replica if sep and _REPLICA_ID.match(replica) else None


class Replicas:
    """This replica's id and address in Redis, and the other replicas' addresses."""

    def __init__(self, redis: Redis, *, key_prefix: str, address: str, replica_id: str | None = None) -> None:
        self.id = replica_id or new_replica_id()
        self.address = address.rstrip("/")
        self._redis = redis
        self._prefix = key_prefix
        self._known: dict[str, tuple[str | None, float]] = {}

    def _key(self, replica_id: str) -> str:
        return f"{self._prefix}:replica:{replica_id}"

    def session_id(self) -> str:
        """A new session id owned by this replica (128 random bits after the replica's id)."""
        return f"{self.id}-{secrets.token_hex(16)}"

    async def address_of(self, replica_id: str) -> str | None:
        """Where `replica_id` is served, None when no live replica has that id. Raises RedisError."""
        now = time.monotonic()
        known = self._known.get(replica_id)
        if known is not None and known[1] > now:
            return known[0]
        raw = await self._redis.get(self._key(replica_id))
        address = raw.decode() if isinstance(raw, bytes) else raw
        if len(self._known) > 1000:  # replicas come and go; never keep more than a deployment's worth
            self._known.clear()
        self._known[replica_id] = (address, now + ADDRESS_CACHE_SECONDS)
        return address

    def forget(self, replica_id: str) -> None:
        self._known.pop(replica_id, None)

    @contextlib.asynccontextmanager
    async def registered(self) -> AsyncIterator[None]:
        """Keep this replica's address in Redis while the context lasts; remove it at the end."""
        task = asyncio.create_task(self._refresh(), name="replica-address")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(self._key(self.id))

    async def _refresh(self) -> None:
        while True:
            try:
                await self._redis.set(self._key(self.id), self.address, ex=ADDRESS_TTL_SECONDS)
            except (RedisError, OSError) as exc:  # sessions here are unreachable from elsewhere until it is back
                log.warning("could not publish this replica's address: %s", type(exc).__name__)
            await asyncio.sleep(REFRESH_SECONDS)


class SessionForwarding:
    """ASGI, in front of `/mcp` in stateful mode: a request on another replica's session goes to that
    replica (streamed both ways, so an SSE stream works too); everything else is served here."""

    def __init__(self, app: ASGIApp, replicas: Replicas, *, max_body: int, connect_timeout: float = 2.0) -> None:
        self.app = app
        self.replicas = replicas
        self._max_body = max_body
        # No read timeout: a GET stream stays open as long as the client keeps it. No connection limit
        # either: each open stream holds one, and a pool limit would make the next session wait for it.
        self._http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(None, connect=connect_timeout),
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=32),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = _foreign_owner(scope, self.replicas.id)
        if owner is None:
            await self.app(scope, receive, send)
            return
        try:
            address = await self.replicas.address_of(owner)
        except (RedisError, OSError):
            await _answer(send, 503, _DIRECTORY_DOWN, retry_after=True)
            return
        if address is None:
            await _answer(send, 404, SESSION_NOT_FOUND)
            return
        body = await _read_body(receive, self._max_body)
        if body is None:
            await _answer(send, 413, _TOO_LARGE)
            return
        await self._forward(scope, receive, send, address, owner, body)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, address: str, owner: str, body: bytes) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP and k != FORWARDED_HEADER]
        headers.append((FORWARDED_HEADER, self.replicas.id.encode()))
        record = scope.get(REQUEST_SCOPE_KEY)
        if isinstance(record, RequestRecord):
            # One request, one id in both replicas' log lines; its audit record is the owner's to write.
            headers = [(k, v) for k, v in headers if k.lower() != b"x-request-id"]
            headers.append((b"x-request-id", record.request_id.encode()))
            record.audited = True
        query = scope.get("query_string", b"")
        url = f"{address}{scope['path']}" + (f"?{query.decode('latin-1')}" if query else "")
        request = self._http.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await self._http.send(request, stream=True)
        except httpx2.TransportError:
            # Nothing answers at the owner's address: it died, and its sessions with it.
            self.replicas.forget(owner)
            await _answer(send, 404, SESSION_NOT_FOUND)
            return
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP | _ADDED_HERE]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async with anyio.create_task_group() as group:

                async def client_gone() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(client_gone)
                with contextlib.suppress(httpx2.TransportError):  # the owner died mid-answer: end it here
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        finally:
            await response.aclose()


def _foreign_owner(scope: Scope, mine: str) -> str | None:
    """The owner of the request's session when that is another replica and the request was not forwarded."""
    if scope["type"] != "http":
        return None
    session: bytes | None = None
    for key, value in scope["headers"]:
        if key == FORWARDED_HEADER:
            return None
        if key == b"mcp-session-id":
            session = value
    if session is None:
        return None
    owner = owner_of(session.decode("latin-1"))
    return owner if owner is not None and owner != mine else None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Send, status: int, body: bytes, *, retry_after: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
