"""The hot path: a stateless JSON `tools/call` (or `resources/read`, `prompts/get`) answered without the
SDK's per-request machinery.

In stateless mode the SDK builds, for every POST, a transport, a task group, a
JSON-RPC dispatcher, a connection and memory streams, then tears them down:
about half of the gateway's CPU per call, measured (bench/README.md). A
`tools/call` on a handshake-era protocol version, answered as JSON, needs none
of it: this ASGI layer, in front of the SDK app on `/mcp`, answers exactly
that case itself and hands every other request to the SDK untouched (with
its body replayed).

It answers only when all of these hold, and otherwise defers:

- POST with `Content-Type: application/json`, an `Accept` that allows JSON,
  and no `MCP-Protocol-Version` or a handshake-era one (2026-07-28 requests
  take the SDK's modern path);
- the body is one JSON-RPC request (`jsonrpc` "2.0", an id) for a method it
  serves (`Route`s: `tools/call`, `resources/read`, `prompts/get`) whose
  params pass the SDK's own per-version surface validation;
- the Host/Origin checks pass (the SDK's own `TransportSecurityMiddleware`);
- `TenantAuth` put a principal on the request.

What it sends is what the SDK would: the same handler (`Gateway.answer_call`, `Offerings.read`, ...),
the result through the SDK's per-version result sieve, the same JSON-RPC
envelope (`tests/gateway/test_fastpath.py` compares the two byte for byte
after parsing), with one intended difference: an unexpected exception in the handler is
`-32603 Internal server error` here, where the SDK's stateless path puts `str(exc)` on the
wire. There is no back-channel on this path, as on the SDK's
stateless JSON path: an upstream's sampling or elicitation request is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import mcp_types as types
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp_types import methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantry.auth.middleware import principal_from_scope
from tenantry.metrics import Metrics
from tenantry.tenancy import Principal

log = logging.getLogger(__name__)

# What answers one method: its validated params, for the caller, to the result (or the MCPError refusing it).
Answer = Callable[[Principal, Any], Awaitable[BaseModel]]
FastRoute = tuple[type[BaseModel], Answer]  # the method's params model, and its answer
# A refusal of a tool call decided from the caller and the tool's name alone (a tenant over its request
# rate): answered before the rest of the request is parsed or validated, the same error the pipeline gives.
Early = Callable[[Principal, str], Exception | None]

_JSON_HEADERS: Final = [(b"content-type", b"application/json")]
_READ: Final = frozenset({b"mcp-protocol-version", b"content-type", b"accept", b"content-length"})


def _accepts_json(accept: str) -> bool:
    kinds = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return bool(kinds & {"application/json", "application/*", "*/*"})


class ToolCallFastPath:
    def __init__(
        self,
        sdk: ASGIApp,
        routes: dict[str, FastRoute],
        *,
        security: TransportSecuritySettings | None,
        max_body: int,
        metrics: Metrics,
        early: Early | None = None,
    ) -> None:
        self._served = metrics.fast_path_calls
        self._early = early
        self._sdk = sdk
        self._routes = routes
        self._security = TransportSecurityMiddleware(security) if security is not None else None
        self._max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deferred = await self._serve(scope, receive, send)
        if deferred is not None:
            await self._sdk(scope, deferred, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Answer the request, or return the `receive` to hand it to the SDK with."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return receive
        found: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _READ and name not in found:  # the first of each, as the SDK reads them
                found[name] = value
        version = found.get(b"mcp-protocol-version", b"2025-03-26").decode("latin-1")
        content_type = found.get(b"content-type", b"")
        accept = found.get(b"accept", b"").decode("latin-1")
        declared = found.get(b"content-length", b"")
        length = int(declared) if declared.isdigit() and declared.isascii() else -1
        if (
            version not in HANDSHAKE_PROTOCOL_VERSIONS
            or content_type.split(b";", 1)[0].strip() != b"application/json"
            or not _accepts_json(accept)
            or not 0 <= length <= self._max_body
        ):
            return receive
        body, more = await _read(receive, length)
        replay = _replayer(body, more, receive)
        envelope = _envelope(body, self._routes)
        principal = principal_from_scope(scope)
        if envelope is None or principal is None:
            return replay
        if self._security is not None and await self._security.validate_request(Request(scope), is_post=True):
            return replay
        request_id, method, raw = envelope
        name = raw.get("name") if method == "tools/call" else None
        early = self._early(principal, name) if self._early is not None and isinstance(name, str) else None
        route = self._routes[method]
        params = None if early is not None else _params(method, route[0], raw, version)
        if early is None and params is None:
            return replay
        self._served.inc()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        try:
            if early is not None:
                raise early
            assert params is not None
            result = await route[1](principal, params)
            dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
            message["result"] = methods.serialize_server_result(method, version, dumped)
        except Exception as exc:
            error = handler_exception_to_error_data(exc)
            if error is None:
                # The SDK's stateless path would put str(exc) on the wire; internals stay in the log here.
                log.exception("%s failed", method)
                error = types.ErrorData(code=types.INTERNAL_ERROR, message="Internal server error")
            message["error"] = error.model_dump(by_alias=True, mode="json", exclude_none=True)
        text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
        try:
            payload = text.encode()
        except UnicodeEncodeError:  # a lone surrogate the client sent (a tool name echoed back): escaped
            payload = json.dumps(message, separators=(",", ":")).encode()
        headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return None


def _envelope(body: bytes, routes: dict[str, FastRoute]) -> tuple[str | int, str, dict[str, Any]] | None:
    """(id, method, raw params) when `body` is one JSON-RPC request for a method of `routes` with params;
    None for anything else (the SDK answers it: a parse error, a batch, a notification, another method)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    method = message.get("method") if isinstance(message, dict) else None
    if method not in routes or message.get("jsonrpc") != "2.0":
        return None
    request_id = message.get("id")
    if not isinstance(request_id, str | int) or isinstance(request_id, bool) or set(message) - _ENVELOPE:
        return None
    raw = message.get("params")
    if not isinstance(raw, dict) or (method == "tools/call" and not isinstance(raw.get("name"), str)):
        return None
    return request_id, str(method), raw


def _params(method: str, model: type[BaseModel], raw: Any, version: str) -> BaseModel | None:
    """The params when they pass the SDK's own per-version surface validation; None otherwise."""
    try:
        methods.validate_client_request(method, version, raw)
        return model.model_validate(raw, by_name=False)
    except (ValidationError, KeyError, ValueError):
        return None


_ENVELOPE: Final = frozenset({"jsonrpc", "id", "method", "params"})


async def _read(receive: Receive, length: int) -> tuple[bytes, bool]:
    """The body, when it arrives within `length` bytes (what Content-Length said); else what came so far."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), True
        chunk = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        if size > length:
            return b"".join(parts), message.get("more_body", False)
        if not message.get("more_body", False):
            return b"".join(parts), False


def _replayer(body: bytes, more: bool, receive: Receive) -> Receive:
    """A `receive` that yields the already-read body first, then whatever the client still sends."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay
