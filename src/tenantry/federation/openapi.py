"""A REST API described by an OpenAPI document, served to the gateway as an upstream `Link`.

An upstream of kind `openapi` has no MCP server behind it: `OpenApiSession` answers `tools/list`
from the document (`openapi_schema.py` maps operations to tools) and `tools/call` with one HTTP
request to the API. Everything else is the same as for an MCP upstream, because the pool, the
discovery (pinning, screening) and the one call pipeline (policy, metering, audit) only see a `Link`.

- The document is the uploaded one (stored in the row) or fetched from the row's URL at every
  discovery, so a document that changes is pinned and screened like a changed `tools/list`.
- Every address is vetted by the SSRF policy: the document's URL and the API's base URL (the
  document's server, which may be another host), and connections go to the vetted addresses only.
  Redirects are not followed.
- The API gets the tenant's sealed credential headers, never the caller's token; header parameters
  that would overwrite them are not offered to the model.
- A JSON 2xx answer is `structuredContent` (an object; anything else wrapped as `{"result": ...}`)
  and its text; any other status is a tool error naming the status with a short body.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import mcp_types as types
from mcp.shared.exceptions import MCPError

from tenantry.errors import BadRequest
from tenantry.federation.http1 import Http1Client, HttpStatusError
from tenantry.federation.openapi_schema import Operation, check_filters, invalid, operations, parse_document, server_url
from tenantry.federation.registry import Upstream
from tenantry.federation.ssrf import check_url
from tenantry.settings import Settings
from tenantry.tools.base import Relay

_ACCEPT_DOCUMENT = "application/json, application/yaml;q=0.9, */*;q=0.5"


async def _vetted(url: str, settings: Settings) -> list[str]:
    return await check_url(
        url, allow_private=settings.upstream_allow_private, allow_loopback=settings.upstream_allow_loopback
    )


async def fetch_document(url: str, headers: dict[str, str], settings: Settings) -> dict[str, Any]:
    """GET the document at `url` (SSRF-vetted, with the tenant's headers, bounded in time and size)."""
    http = Http1Client(
        url,
        headers,
        addresses=await _vetted(url, settings),
        connect_timeout=settings.upstream_connect_timeout_seconds,
        max_response_bytes=settings.openapi_max_document_bytes,
        max_idle=0,
        tls_groups=settings.tls_groups,
    )
    try:
        async with asyncio.timeout(settings.upstream_call_timeout_seconds):
            response, conn = await http.send("GET", None, accept=_ACCEPT_DOCUMENT)
            body = await response.body()
            http.release(conn, response)
    finally:
        http.close()
    if response.status != 200:
        raise HttpStatusError(response.status, body)
    # Megabytes of JSON or YAML take a while to parse: not on the event loop every call shares.
    return await asyncio.to_thread(parse_document, body)


async def prepare(
    settings: Settings,
    *,
    url: str,
    headers: dict[str, str],
    document: dict[str, Any] | str | None,
    filters: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
    """Check an `openapi` registration before anything is written: the document (uploaded, or fetched
    from `url` now) must be OpenAPI 3 and yield 1..`openapi_max_operations` tools, and the API's base
    URL must pass the SSRF policy. Returns the document to store (None: fetched from `url`) and the
    filters; raises a 400 otherwise."""
    checked = check_filters(filters)
    await _vetted(url, settings)
    stored: dict[str, Any] | None = None
    if document is None:
        try:
            doc = await fetch_document(url, headers, settings)
        except BadRequest:  # not OpenAPI, or an address the SSRF policy refuses
            raise
        except Exception as exc:  # whatever failed on the way: the registration is refused, not a 500
            raise BadRequest(
                f"the OpenAPI document at {url[:200]!r} could not be fetched: {str(exc)[:200] or type(exc).__name__}",
                code="openapi_document_unreachable",
            ) from exc
    else:
        doc = await asyncio.to_thread(parse_document, document) if isinstance(document, str) else document
        if len(json.dumps(doc)) > settings.openapi_max_document_bytes:
            raise invalid(f"it is larger than {settings.openapi_max_document_bytes} bytes")
        stored = doc
    limit = settings.openapi_max_operations
    found = operations(doc, checked, credential_headers=headers, limit=limit + 1)
    if not found:
        raise BadRequest("no operation of the document is left to offer as a tool", code="no_openapi_operations")
    if len(found) > limit:
        raise BadRequest(
            f"the document offers more than {limit} operations; narrow them with operations.include/exclude",
            code="too_many_openapi_operations",
        )
    await _vetted(server_url(doc, url, fetched=stored is None), settings)
    return stored, checked


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _error(code: str, message: str, **extra: Any) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)],
        structured_content={"error": code, "detail": message, **extra},
        is_error=True,
    )


class OpenApiSession:
    """The `Link` of an `openapi` upstream: tools from its document, calls as HTTP requests."""

    def __init__(self, upstream: Upstream, headers: dict[str, str], settings: Settings) -> None:
        self._upstream, self._headers, self._settings = upstream, headers, settings
        self._operations: dict[str, Operation] = {}
        self._http: Http1Client | None = None
        self._base = ""

    @property
    def capabilities(self) -> dict[str, Any]:
        return {}  # tools only: no prompts, no resources

    async def start(self) -> None:
        await self._load(self._upstream.document or await self._fetch())

    async def _fetch(self) -> dict[str, Any]:
        return await fetch_document(self._upstream.url, self._headers, self._settings)

    async def _load(self, doc: dict[str, Any]) -> None:
        s = self._settings
        found = operations(
            doc, self._upstream.operations, credential_headers=self._headers, limit=s.openapi_max_operations
        )
        base = server_url(doc, self._upstream.url, fetched=self._upstream.document is None)
        if self._http is None or base != self._base:
            http = Http1Client(
                base,
                self._headers,
                addresses=await _vetted(base, s),
                connect_timeout=s.upstream_connect_timeout_seconds,
                max_response_bytes=s.upstream_max_response_bytes,
                max_idle=s.upstream_max_idle_connections,
                tls_groups=s.tls_groups,
            )
            if self._http is not None:
                self._http.close()
            self._http, self._base = http, base
        self._operations = {op.tool: op for op in found}

    async def aclose(self) -> None:
        if self._http is not None:
            self._http.close()

    async def list_tools(self) -> list[types.Tool]:
        if self._upstream.document is None:  # fetched: read it again, as an MCP server is asked again
            await self._load(await self._fetch())
        return [types.Tool.model_validate(op.definition) for op in self._operations.values()]

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise MCPError(types.METHOD_NOT_FOUND, f"a REST API upstream answers tools only, not {method[:60]}")

    def _target(self, op: Operation, arguments: dict[str, Any]) -> tuple[str, str, bytes | None]:
        """(request target, extra header lines, body) for `op` called with `arguments`; ValueError
        names what is wrong with the arguments."""
        path, body = op.path, None
        query: list[tuple[str, str]] = []
        headers: list[str] = []
        for param in op.parameters:
            value = arguments.get(param.argument)
            if value is None:
                if param.required:
                    raise ValueError(f"missing required argument {param.argument!r}")
                continue
            if param.location == "path":
                path = path.replace("{" + param.name + "}", quote(_text(value), safe=""))
            elif param.location == "query":
                items = value if isinstance(value, list) else [value]
                query.extend((param.name, _text(item)) for item in items)
            elif param.location == "header":
                text = _text(value)
                if "\r" in text or "\n" in text:
                    raise ValueError(f"argument {param.argument!r} is not a valid header value")
                headers.append(f"{param.name}: {text}\r\n")
            else:
                body = json.dumps(value).encode()
        prefix = urlsplit(self._base).path.rstrip("/")
        target = prefix + (path if path.startswith("/") else "/" + path)
        if query:
            target += "?" + urlencode(query, quote_via=quote)
        return target, "".join(headers), body

    async def call_tool(self, tool: str, arguments: dict[str, Any], relay: Relay | None) -> types.CallToolResult:
        op = self._operations.get(tool)
        if op is None or self._http is None:
            return _error("unknown_tool", f"the API's document has no operation {tool[:100]!r} now")
        try:
            target, extra, body = self._target(op, arguments)
        except ValueError as exc:
            return _error("invalid_arguments", str(exc))
        http = self._http
        response, conn = await http.send(
            op.method.upper(), body, extra, accept="application/json, */*;q=0.5", target=target,
            retry=op.method in ("get", "put", "delete"),
        )  # fmt: skip
        try:
            payload = await response.body()
        except BaseException:
            http.discard(conn)
            raise
        http.release(conn, response)
        return self._result(response.status, response.content_type, payload)

    def _result(self, status: int, content_type: str, payload: bytes) -> types.CallToolResult:
        text = payload.decode("utf-8", "replace")
        parsed: Any = None
        if content_type == "application/json" or content_type.endswith("+json"):
            try:
                parsed = json.loads(payload) if payload else None
            except (ValueError, RecursionError):
                parsed = None
        if not 200 <= status < 300:
            short = text[: self._settings.openapi_error_body_chars]
            return _error("http_error", f"HTTP {status}: {short}", status=status)
        if parsed is None:
            return types.CallToolResult(content=[types.TextContent(type="text", text=text or f"HTTP {status}")])
        structured = parsed if isinstance(parsed, dict) else {"result": parsed}
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(parsed))], structured_content=structured
        )
