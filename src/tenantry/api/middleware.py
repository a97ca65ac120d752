"""What every response gets, in one pure ASGI layer outside everything else: `RequestObserver`.

- a request id: the client's `X-Request-ID` when it is acceptable (1-128
  characters that are safe in a header, a log line and JSON), else a new one;
  echoed on the response, put in every log line of the request and in every
  JSON error body (`request_id`);
- security headers: `X-Content-Type-Options: nosniff`, `Referrer-Policy:
  no-referrer`, `X-Frame-Options: DENY`, a `Content-Security-Policy` (the API's
  answers may run nothing; HTML, the API docs page, only its own scripts and
  the docs' CDN) and HSTS when the request came over TLS;
- a span for the request (when tracing is on) and one access log line when it
  ends: method, path, status, latency, tenant, subject, MCP method, tool and
  outcome as the layers below noted them (`observability.note`). Never
  headers, tokens or argument values;
- the audit record of a request on an audited path that nobody below wrote
  one for (a refused credential, a transport error, a REST read), made
  durable before the response's last bytes go out (`audit/trail.py`).

CORS, when configured, is Starlette's own middleware inside this one (`app.py`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantry.audit.trail import AuditTrail, tenant_of, transport_of
from tenantry.observability import (
    REQUEST_ID_HEADER,
    REQUEST_SCOPE_KEY,
    RequestRecord,
    Tracing,
    begin_request,
    end_request,
    request_id_from,
)

_ALWAYS: Final = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_API_CSP: Final = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
# The API docs page (FastAPI's Swagger UI) loads its script and styles from its CDN.
_HTML_CSP: Final = (
    b"content-security-policy",
    b"default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
)
_HSTS: Final = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
_REQUEST_ID: Final = REQUEST_ID_HEADER.encode()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class RequestObserver:
    def __init__(self, app: ASGIApp, *, tracing: Tracing, log: logging.Logger, audit: AuditTrail | None = None) -> None:
        self.app = app
        self._tracing = tracing
        self._log = log
        self._audit = audit if audit is not None and audit.enabled else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(_header(scope["headers"], _REQUEST_ID))
        record, token = begin_request(request_id)
        scope[REQUEST_SCOPE_KEY] = record
        tls = scope.get("scheme") == "https"
        status = 500  # what the client gets if the app fails before answering
        held: Message | None = None  # an error's response start, until its JSON body is known
        started = False  # a response start went to the client
        error: str | None = None  # the code of an error response
        if self._audit is not None and scope["method"] != "OPTIONS":  # a CORS preflight asks, it does nothing
            record.transport = transport_of(scope["path"])

        async def observed(message: Message) -> None:
            nonlocal status, held, started, error
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (_REQUEST_ID, request_id.encode()), *_ALWAYS]
                content_type = _header(headers, b"content-type") or b""
                headers.append(_HTML_CSP if content_type.startswith(b"text/html") else _API_CSP)
                if tls:
                    headers.append(_HSTS)
                message = {**message, "headers": headers}
                if status >= 400 and content_type.startswith(b"application/json"):
                    held = message
                    return
                started = True
            elif held is not None:
                start, held = held, None
                if not message.get("more_body", False):
                    body, error = _with_request_id(message.get("body", b""), request_id)
                    headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                    start = {**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
                    message = {**message, "body": body}
                started = True
                await send(start)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await self._record(scope, record, status, error)
            await send(message)

        try:
            with self._tracing.span(
                f"{scope['method']} {scope['path']}",
                **{
                    "http.request.method": scope["method"],
                    "url.path": scope["path"],
                    "tenantry.request_id": request_id,
                },
            ) as span:
                await self.app(scope, receive, observed)
                if span is not None:
                    span.set_attribute("http.response.status_code", status)
                    span.set_attribute("tenantry.request_id", request_id)
        finally:
            await self._record(scope, record, status, error)  # a stream cut short, an app that failed
            end_request(token)
            if self._log.isEnabledFor(logging.INFO):
                fields: dict[str, Any] = {
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "latency_ms": round((time.perf_counter() - record.started) * 1000, 2),
                    "request_id": request_id,
                    "tenant": record.tenant,
                    "subject": record.subject,
                    "key": record.key,
                    "session": record.session,
                    "rpc_method": record.rpc_method,
                    "tool": record.tool,
                    "outcome": record.outcome,
                    "_in_message": ("method", "path", "status"),
                }
                level = logging.ERROR if status >= 500 else logging.INFO
                self._log.log(level, "%s %s %d", scope["method"], scope["path"], status, extra=fields)

    async def _record(self, scope: Scope, record: RequestRecord, status: int, error: str | None) -> None:
        """The request's audit record, unless nobody needs one or someone below wrote it."""
        if self._audit is None or record.transport is None or record.audited:
            return
        if record.pending is not None:
            await self._audit.write(record.pending, record)
            return
        if record.rpc_method == "tools/call" and record.outcome is None:
            return  # a call the pipeline has not ended (the client went away): it writes the call's record
        if status == 202 and record.transport != "rest":
            # An MCP notification or response (not a request), or a legacy SSE message whose request is
            # audited when the gateway handles it (`gateway/server.py`).
            return
        route = scope.get("route")
        template = getattr(route, "path", None) or scope["path"][:200]
        tenant = record.tenant
        detail = record.detail
        if tenant is None:  # a REST call about a tenant (its path names it), or the system trail
            tenant = scope.get("path_params", {}).get("tenant_id")
            claimed = _header(scope["headers"], b"tenant-id")
            if claimed is not None and status in (401, 403):
                detail = {"claimed_tenant": claimed.decode("latin-1")[:100]}
        outcome = record.outcome or error or ("ok" if status < 400 else f"http_{status}")
        method = record.rpc_method or f"{scope['method']} {template}"
        audit = self._audit.record(
            tenant_of(tenant),
            method,
            outcome,
            refused=status >= 400 or outcome != "ok",
            started=record.started,
            request=record,
            tool=record.tool,
            status=status,
            detail=detail,
        )
        await self._audit.write(audit, record)


def _with_request_id(body: bytes, request_id: str) -> tuple[bytes, str | None]:
    """A JSON error object with the request id in it, and its error code; anything else unchanged (a
    JSON-RPC response above all: its members are fixed by the protocol, and the header carries the id
    anyway)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body, None
    if not isinstance(value, dict) or "jsonrpc" in value:
        return body, None
    code = value.get("error")
    code = code[:100] if isinstance(code, str) else None
    if "request_id" in value:
        return body, code
    value["request_id"] = request_id
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(), code
