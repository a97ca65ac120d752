"""The layers every request passes, and the short way `POST /mcp` takes through them.

`edge_middleware` lists, outermost first, what wraps every request: the
observer (request id, access log, span, security headers), CORS when origins
are configured, and the body limit. `TenantryApp` is FastAPI with one
shortcut: `POST /mcp`, nearly every request a gateway serves, goes through
those same layers (built once from the same list) straight to the MCP
endpoint, past the framework's own per-request layers (error page, exception
handlers, telemetry hook, exit stack, router). Those cost about a fifth of the
server's CPU per tool call, and what matters more, of every refused one a
flooding tenant sends (bench/bench_noisy.py). The MCP endpoint raises nothing
they would handle: it answers its own errors (JSON-RPC or JSON). Every other
request, `/mcp` with any other method included (405 with `Allow`), takes the
framework's way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantry.api.body_limit import BodyLimit
from tenantry.api.middleware import RequestObserver
from tenantry.audit.trail import AuditTrail
from tenantry.observability import Tracing
from tenantry.settings import Settings

# What a browser MCP client or console sends and may read, beyond the CORS-safelisted headers.
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Tenant-ID",
    "Mcp-Session-Id",
    "MCP-Protocol-Version",
    "Last-Event-ID",
    "X-Request-ID",
    "X-CSRF-Token",
]
CORS_RESPONSE_HEADERS = ["Mcp-Session-Id", "X-Request-ID", "WWW-Authenticate", "Retry-After"]

MCP_PATH = "/mcp"


def edge_middleware(settings: Settings, tracing: Tracing, audit: AuditTrail | None = None) -> list[Middleware]:
    """Outermost first: the observer sees every response, CORS answers preflights before routing."""
    edge = [Middleware(RequestObserver, tracing=tracing, log=logging.getLogger("tenantry.access"), audit=audit)]
    if settings.cors_allowed_origins:
        edge.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_allowed_origins,
                allow_credentials=settings.cors_allow_credentials,
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=CORS_REQUEST_HEADERS,
                expose_headers=CORS_RESPONSE_HEADERS,
                max_age=600,
            )
        )
    edge.append(Middleware(BodyLimit, max_bytes=settings.max_request_bytes))
    return edge


def wrap(app: ASGIApp, middleware: Sequence[Middleware]) -> ASGIApp:
    """`app` inside `middleware` (outermost first), as Starlette would stack it."""
    for cls, args, kwargs in reversed(middleware):
        app = cls(app, *args, **kwargs)
    return app


class TenantryApp(FastAPI):
    _mcp: ASGIApp | None = None

    def serve_mcp_directly(self, endpoint: ASGIApp) -> None:
        """Send `POST /mcp` to `endpoint` through this app's own middleware, and nothing else of it."""
        self._mcp = wrap(endpoint, self.user_middleware)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mcp = self._mcp
        if mcp is not None and scope["type"] == "http" and scope["path"] == MCP_PATH and scope["method"] == "POST":
            scope["app"] = self
            await mcp(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
