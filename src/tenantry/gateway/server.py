"""The MCP face of the gateway: a low-level SDK `Server` whose handlers answer per tenant.

Handlers take the principal from the HTTP request of the message they are
handling (put there by `TenantAuth`), never from connection state, so each
message is authorised on its own. Built once per app; `transports()` gives
the ASGI endpoints for streamable HTTP (`/mcp`) and legacy SSE (`/sse`,
`/messages/`), each behind `TenantAuth`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any, Final

import mcp_types as types
from mcp.server import Server
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantry.audit.records import SYSTEM_TENANT
from tenantry.audit.trail import AuditTrail
from tenantry.auth.middleware import TenantAuth, principal_from_scope
from tenantry.auth.resolver import CredentialResolver
from tenantry.gateway.calls import ToolCalls
from tenantry.gateway.context import (
    REQUEST_LEVEL_REFUSALS,
    UNAUTHENTICATED,
    jsonrpc_error,
    principal_of,
)
from tenantry.gateway.fastpath import FastRoute, ToolCallFastPath
from tenantry.gateway.relay import NO_CHANNEL, AgentRelay, LogLevels, session_key
from tenantry.gateway.replicas import Replicas, SessionForwarding
from tenantry.gateway.resources import Offerings
from tenantry.gateway.sessions import Sessions
from tenantry.gateway.subscriptions import Subscriptions
from tenantry.metrics import Metrics
from tenantry.observability import adopt_request, current_request, note
from tenantry.settings import Settings
from tenantry.tenancy import Principal, bind_principal
from tenantry.tools.base import Relay

log = logging.getLogger(__name__)


class Gateway:
    def __init__(
        self,
        settings: Settings,
        calls: ToolCalls,
        resolver: CredentialResolver,
        metrics: Metrics,
        audit: AuditTrail | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self._calls = calls
        # Stateful sessions behind a balancer: each session id names its replica (`replicas.py`).
        self.replicas = replicas if settings.mcp_stateful else None
        self.replica_id = replicas.id if replicas is not None else None
        self._log_levels = LogLevels(stateful=settings.mcp_stateful)
        with warnings.catch_warnings():
            # logging/setLevel is deprecated from 2026-07-28 on, but clients on handshake versions still send it.
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            self.subscriptions = Subscriptions(calls.catalog.pool)
            calls.observers.append(self.subscriptions.written)
            self.offerings = Offerings(calls, calls.catalog, self.subscriptions, stateful=settings.mcp_stateful)
            self.server: Server[Any] = _Server(
                "tenantry",
                version="0.1.0",
                instructions=(
                    "Your tenant's tools, prompts and resources. Everything is scoped to the tenant of your credential."
                ),
                on_list_tools=self._list_tools,
                on_call_tool=self._call_tool,
                on_set_logging_level=self._set_logging_level,
                **self.offerings.handlers(),
            )
        # The OpenTelemetry middleware is a no-op without an exporter; skip it on the hot path.
        self.server.middleware = [AuditedMessages(audit)] if audit is not None and audit.enabled else []
        security = None
        if settings.mcp_allowed_hosts:
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=settings.mcp_allowed_hosts,
                allowed_origins=settings.mcp_allowed_origins,
            )
        self.session_manager = Sessions(
            app=self.server,
            stateless=not settings.mcp_stateful,
            json_response=settings.mcp_json_response,
            security_settings=security,
            max_request_body_size=settings.max_request_bytes,
            session_idle_timeout=settings.mcp_session_idle_seconds,
            mint=self.replicas.session_id if self.replicas is not None else None,
        )
        self.session_manager.on_end.append(self._log_levels.forget)
        self.session_manager.on_end.append(self.subscriptions.forget)
        self._fast = settings.mcp_fast_path and not settings.mcp_stateful and settings.mcp_json_response
        self._stateful = settings.mcp_stateful
        self._security = security
        self._max_body = settings.max_request_bytes
        self._sse = SseServerTransport(
            "/messages/", security_settings=security, max_request_body_size=settings.max_request_bytes
        )
        self._resolver = resolver
        self._metrics = metrics

    def kept_for(self, session_id: str) -> dict[str, Any]:
        """What this replica keeps for a stateful session: whether it is live, and the level its agent set."""
        return {"live": self.session_manager.live(session_id), "log_level": self._log_levels.level_of(session_id)}

    async def end_session(self, session_id: str) -> None:
        """End a stateful session on this replica, if it is here (an admin killed it)."""
        if await self.session_manager.end(session_id):
            log.info("session %s ended by a kill", session_id[:64])

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Enter in the app's lifespan: the session manager's task group lives this long."""
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.session_manager.run())
            stack.push_async_callback(self.subscriptions.aclose)
            if self.replicas is not None:
                await stack.enter_async_context(self.replicas.registered())
                stack.push_async_callback(self._forwarding.aclose)
            yield

    def _guard(self, app: Any) -> TenantAuth:
        return TenantAuth(app, self._resolver, self._metrics)

    @functools.cached_property
    def _forwarding(self) -> SessionForwarding:
        assert self.replicas is not None
        return SessionForwarding(self._authenticated_mcp, self.replicas, max_body=self._max_body)

    @functools.cached_property
    def mcp_endpoint(self) -> ASGIApp:
        """`/mcp`: a request on another replica's session forwarded there, else `_authenticated_mcp`."""
        return self._forwarding if self.replicas is not None else self._authenticated_mcp

    @functools.cached_property
    def _authenticated_mcp(self) -> TenantAuth:
        """Authenticated, then the fast path for plain tool calls, then the SDK for the rest."""
        mcp: Any = JsonRpcErrors(StreamableHTTPASGIApp(self.session_manager))
        if self._fast:
            routes: dict[str, FastRoute] = {
                "tools/call": (types.CallToolRequestParams, self._answer_fast),
                "resources/read": (types.ReadResourceRequestParams, self.offerings.read),
                "prompts/get": (types.GetPromptRequestParams, self.offerings.get),
            }
            mcp = ToolCallFastPath(
                mcp,
                routes,
                security=self._security,
                max_body=self._max_body,
                metrics=self._metrics,
                early=self.refuse_early,
            )
        return self._guard(mcp)

    def routes(self) -> list[BaseRoute]:
        guard = self._guard
        # Stateless, a GET would open an SSE stream no message can ever reach and a DELETE ends no session:
        # both are answered 405 (Allow: POST), which MCP clients take as "no such stream" / "no session".
        methods = ["GET", "POST", "DELETE"] if self._stateful else ["POST"]
        return [
            Route("/mcp", endpoint=self.mcp_endpoint, methods=methods),
            Route("/sse", endpoint=guard(self._handle_sse), methods=["GET"]),
            Mount("/messages/", app=guard(self._sse.handle_post_message)),
        ]

    async def _handle_sse(self, scope: Any, receive: Any, send: Any) -> None:
        async with self._sse.connect_sse(scope, receive, send) as (read_stream, write_stream):
            await self.server.run(read_stream, write_stream, self.server.create_initialization_options())
        # connect_sse has answered the request; Starlette needs nothing more.

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        principal = principal_of(ctx)
        note(rpc_method="tools/list")
        self.subscriptions.seen(principal.tenant_id, session_key(ctx, stateful=self._stateful), ctx.session)
        # Not counted against the request rate: the SDK lists tools after calls to refresh their output
        # schemas, and a listing refused there would make a call that ran and was billed look failed.
        # A listing is served from memory (the catalog), so it costs too little to need a limit.
        return types.ListToolsResult(tools=await self._calls.list_tools(principal))

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        principal = principal_of(ctx)
        relay = AgentRelay(ctx, self._log_levels.allowed(ctx, principal.tenant_id))
        return await self.answer_call(principal, params.name, params.arguments, relay)

    async def answer_call(
        self, principal: Principal, name: str, arguments: dict[str, Any] | None, relay: Relay
    ) -> types.CallToolResult:
        """A tools/call's result, or the MCPError it is refused with (both MCP paths answer through here)."""
        note(rpc_method="tools/call")
        with bind_principal(principal):
            outcome = await self._calls.call(principal, name, arguments, relay)
        if outcome.error is not None and outcome.error.code == "unknown_tool":
            raise MCPError(types.INVALID_PARAMS, f"unknown tool: {name[:100]}")
        if outcome.error is not None and outcome.error.code in REQUEST_LEVEL_REFUSALS:
            raise jsonrpc_error(outcome.error)
        return outcome.to_mcp()

    async def _answer_fast(self, principal: Principal, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await self.answer_call(principal, params.name, params.arguments, NO_CHANNEL)

    def refuse_early(self, principal: Principal, name: str) -> MCPError | None:
        """What `answer_call` would raise for a call refused from memory alone (the tenant is over its
        request rate), decided before the request is parsed further; None when the call must run."""
        started = time.perf_counter()
        error = self._calls.refused_at_once(principal, name)
        if error is None:
            return None
        note(rpc_method="tools/call")
        self._calls.observe_refusal(principal, name, error, started)
        return jsonrpc_error(error)

    async def _set_logging_level(
        self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        """The agent's log level for what upstreams log during its calls (per session; filtered here)."""
        self._log_levels.set(ctx, principal_of(ctx).tenant_id, params.level)
        return types.EmptyResult()


_JSONRPC_CODES: Final = {
    types.INVALID_PARAMS: "invalid_params",
    types.METHOD_NOT_FOUND: "method_not_found",
    types.INVALID_REQUEST: "invalid_request",
    UNAUTHENTICATED: "unauthenticated",
}


class _Server(Server[Any]):
    """The SDK's server, announcing list changes on handshake protocol versions: the gateway relays
    its upstreams' (and its sessions hear them, see `subscriptions.py`)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        changes = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        return super().create_initialization_options(
            notification_options or changes, experimental_capabilities, extensions
        )


class AuditedMessages:
    """Server middleware: the audit record of every MCP request the SDK dispatches (initialize,
    tools/list, ping...) that the call pipeline does not write itself (it writes every tool call's)."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        request = ctx.request
        scope = request.scope if isinstance(request, Request) else None
        if scope is not None:
            adopt_request(scope)
        started = time.perf_counter()
        try:
            result = await call_next(ctx)
        except MCPError as exc:
            data = exc.error.data
            code = data.get("error") if isinstance(data, dict) else None
            await self._write(ctx, scope, str(code or _JSONRPC_CODES.get(exc.error.code, "jsonrpc_error")), started)
            raise
        except ValidationError:
            await self._write(ctx, scope, "invalid_params", started)
            raise
        except Exception:
            await self._write(ctx, scope, "internal_error", started)
            raise
        await self._write(ctx, scope, "ok", started)
        return result

    async def _write(
        self, ctx: ServerRequestContext[Any, Any], scope: Scope | None, outcome: str, started: float
    ) -> None:
        record = current_request()
        if record is not None and record.audited:  # the pipeline wrote this tool call's
            return
        principal = principal_from_scope(scope) if scope is not None else None
        name = ctx.params.get("name") if ctx.method == "tools/call" and ctx.params else None
        audit = self._trail.record(
            principal.tenant_id if principal is not None else SYSTEM_TENANT,
            ctx.method,
            outcome,
            refused=outcome != "ok",
            started=started,
            tool=name[:200] if isinstance(name, str) else None,
        )
        modern = ctx.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS
        if ctx.method == "tools/list" and modern and record is not None and record.transport == "streamable_http":
            # On the 2026-07-28 protocol the SDK lists tools itself, in the request of a tools/call, to
            # check its Mcp-Param headers: a listing is recorded only if no call of the same request is.
            record.pending = audit
            return
        await self._trail.write(audit)


class JsonRpcErrors:
    """What the SDK's transport answers with an error status, as a JSON-RPC error object every MCP client
    can read: a plain-text body (`Invalid Content-Type header`) becomes one, and a validation dump (the
    input echoed, links to pydantic's docs) is cut to its first line, and the SDK's "Invalid request
    parameters" with empty data says what it means. Other answers pass as sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: Message | None = None

        async def rewrite(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and (message["status"] >= 400 or _is_json(message)):
                held = message
                return
            if held is not None and message["type"] == "http.response.body" and not message.get("more_body"):
                start, held = held, None
                body = message.get("body", b"")
                if start["status"] < 400 and _EMPTY_PARAMS_ERROR not in body:
                    await send(start)
                    await send(message)
                    return
                body = _json_rpc_error(body, start["status"])
                headers = [
                    (k, v) for k, v in start.get("headers", ()) if k.lower() not in (b"content-length", b"content-type")
                ]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({**start, "headers": headers})
                message = {**message, "body": body}
            elif held is not None:
                start, held = held, None
                await send(start)
            await send(message)

        await self.app(scope, receive, rewrite)


# The SDK's answer to params that fail its validation: no word on what was wrong, and data "".
_EMPTY_PARAMS_ERROR = b'"Invalid request parameters"'


def _is_json(start: Message) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"application/json") for k, v in start.get("headers", ()))


def _json_rpc_error(body: bytes, status: int) -> bytes:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        value = None
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        error = value["error"]
        message = str(error.get("message", ""))
        if "validation error" in message.lower() or "pydantic" in message:
            error["message"] = message.split("\n", 1)[0][:200]
            error.pop("data", None)
        elif message == "Invalid request parameters" and not error.get("data"):
            error["message"] = "Invalid request parameters: the params do not match the method's schema"
            error.pop("data", None)
        return json.dumps(value, separators=(",", ":")).encode()
    text = body.decode("utf-8", "replace").strip()[:200] or f"HTTP {status}"
    code = types.INVALID_REQUEST if status < 500 else types.INTERNAL_ERROR
    return json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": text}}).encode()
