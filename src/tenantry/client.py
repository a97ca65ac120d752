"""A small MCP client for the CLI, onboarding's canary and tests: the official SDK client with the two
tenant headers, whose failures come out as one `GatewayError` that says what happened in one line.

The SDK reports a refused request as "Server returned an error response" inside nested exception
groups; the gateway's own answer (`401 invalid_credentials: unknown credential`) is in the HTTP
response, which an event hook keeps so the error can name it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

Kind = Literal["usage", "auth", "unavailable"]
# JSON-RPC errors that mean the caller asked for something wrong (an unknown tool, bad params).
_CALLER_ERRORS = frozenset({-32600, -32601, -32602})


class GatewayError(Exception):
    """What went wrong talking to the gateway: `kind` is usage (the request was wrong), auth (401/403)
    or unavailable (unreachable, timed out, or the gateway failed)."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@asynccontextmanager
async def connect(url: str, headers: dict[str, str], transport: str = "http") -> AsyncIterator[Client]:
    """An initialised MCP client session to `url`, sending `headers` on every request."""
    refused: list[httpx2.Response] = []

    async def keep_refusals(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            await response.aread()
            refused.append(response)

    try:
        if transport == "sse":
            async with Client(sse_client(url, headers=headers), mode="legacy") as client:
                yield client
            return
        hooks = {"response": [keep_refusals]}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30, event_hooks=hooks) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            yield client
    except Exception as exc:
        raise explain(exc, refused[-1] if refused else None) from None


def explain(exc: BaseException, response: httpx2.Response | None = None) -> GatewayError:
    """One line for whatever the SDK raised, with the gateway's own reason when it gave one."""
    if isinstance(exc, GatewayError):
        return exc
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, httpx2.HTTPStatusError):
            response = leaf.response
    if response is not None:
        return _from_response(response)
    for leaf in leaves:
        if isinstance(leaf, MCPError):
            kind: Kind = "usage" if leaf.code in _CALLER_ERRORS else "unavailable"
            return GatewayError(kind, f"{leaf.code} {leaf.error.message}")
        if isinstance(leaf, httpx2.TransportError | OSError | TimeoutError):
            return GatewayError(
                "unavailable", f"the gateway did not answer: {type(leaf).__name__}: {leaf}".rstrip(": ")
            )
    leaf = leaves[0] if leaves else exc
    return GatewayError("unavailable", f"{type(leaf).__name__}: {leaf}")


def _from_response(response: httpx2.Response) -> GatewayError:
    status = response.status_code
    kind: Kind = "auth" if status in (401, 403) else "usage" if 400 <= status < 500 else "unavailable"
    try:
        body = json.loads(response.content)
        error = body["error"]
        if isinstance(error, dict):  # a JSON-RPC error the MCP endpoint answered with
            code = error.get("code")
            kind = "usage" if code in _CALLER_ERRORS else "auth" if kind == "auth" else "unavailable"
            return GatewayError(kind, f"{code} {error.get('message')}")
        reason = f"{error}: {body['detail']}"
    except (ValueError, KeyError, TypeError):
        reason = response.content[:200].decode("utf-8", "replace").strip() or response.reason_phrase
    return GatewayError(kind, f"{status} {reason}")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def list_tools(url: str, headers: dict[str, str], transport: str = "http") -> list[dict[str, Any]]:
    async with connect(url, headers, transport) as client:
        result = await client.list_tools()
    return [tool.model_dump(by_alias=True, exclude_none=True, mode="json") for tool in result.tools]


async def call_tool(
    url: str, headers: dict[str, str], transport: str, name: str, arguments: dict[str, Any]
) -> dict[str, Any]:
    async with connect(url, headers, transport) as client:
        result = await client.call_tool(name, arguments)
    dumped: dict[str, Any] = result.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped


async def probe(
    url: str, headers: dict[str, str], *, tool: str | None = None, arguments: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a monitoring system asks of a gateway: can a tenant connect, list its tools and (with `tool`)
    call one? Each step timed; status `ok`, `degraded` (connected, but the canary call failed) or `down`."""
    steps: list[dict[str, Any]] = []
    started = time.perf_counter()

    def step(name: str, ok: bool, detail: str | None = None) -> None:
        nonlocal started
        now = time.perf_counter()
        steps.append({"step": name, "ok": ok, "ms": round((now - started) * 1000, 1), "detail": detail})
        started = now

    status = "ok"
    try:
        async with connect(url, headers) as client:
            step("initialize", True)
            tools = (await client.list_tools()).tools
            step("tools/list", True, f"{len(tools)} tools")
            if tool is not None:
                try:
                    result = await client.call_tool(tool, arguments or {})
                except MCPError as exc:
                    step("tools/call", False, f"{exc.code} {exc.error.message}")
                    status = "degraded"
                else:
                    text = " ".join(getattr(c, "text", "") for c in result.content)[:200]
                    step("tools/call", not result.is_error, text if result.is_error else None)
                    status = "degraded" if result.is_error else status
    except GatewayError as exc:
        failed_at = len(steps)  # 0: could not connect, 1: could not list, 2: the canary call
        step(("initialize", "tools/list", "tools/call")[min(failed_at, 2)], False, str(exc))
        status = "down" if failed_at < 2 else "degraded"
    return {"status": status, "url": url, "steps": steps}
