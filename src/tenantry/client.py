"""A small MCP client for the CLI and tests: the official SDK client with the two tenant headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


@asynccontextmanager
async def connect(url: str, headers: dict[str, str], transport: str = "http") -> AsyncIterator[Client]:
    """An initialised MCP client session to `url`, sending `headers` on every request."""
    if transport == "sse":
        async with Client(sse_client(url, headers=headers), mode="legacy") as client:
            yield client
        return
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


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
