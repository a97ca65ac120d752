"""A header-injecting shim for running the MCP conformance suite through the gateway (not used in CI).

The suite cannot send custom headers and expects the fixture's own tool names, so this
forwards `/mcp` to the gateway (relaying server-sent events as they come) adding `Tenant-ID` and
`Authorization`, prefixes tool names in
`tools/call` with `<upstream>__`, and in `tools/list` results keeps only that upstream's tools,
without the prefix. Everything else passes through unchanged.

    GATEWAY=http://127.0.0.1:8000 TENANT_ID=... API_KEY=... UPSTREAM=fx \\
        .venv/bin/python scripts/conformance_shim.py 8100
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

GATEWAY = os.environ.get("GATEWAY", "http://127.0.0.1:8000")
PREFIX = os.environ.get("UPSTREAM", "fx") + "__"
HEADERS = {"Tenant-ID": os.environ["TENANT_ID"], "Authorization": f"Bearer {os.environ['API_KEY']}"}
PASS = {"accept", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id", "mcp-method", "mcp-name"}


def _rewrite_request(message: Any) -> Any:
    if isinstance(message, dict) and message.get("method") == "tools/call":
        message["params"]["name"] = PREFIX + message["params"]["name"]
    return message


def _rewrite_response(message: Any) -> Any:
    tools = message.get("result", {}).get("tools") if isinstance(message, dict) else None
    if isinstance(tools, list):
        kept = [t for t in tools if t["name"].startswith(PREFIX)]
        for tool in kept:
            tool["name"] = tool["name"].removeprefix(PREFIX)
        message["result"]["tools"] = kept
    return message


def _rewrite_sse(chunk: str) -> str:
    lines = []
    for line in chunk.split("\n"):
        if line.startswith("data:") and line[5:].strip():
            with contextlib.suppress(ValueError):
                line = "data: " + json.dumps(_rewrite_response(json.loads(line[5:])))
        lines.append(line)
    return "\n".join(lines)


CLIENT = httpx.AsyncClient(timeout=httpx.Timeout(60, read=None))


async def mcp(request: Request) -> Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() in PASS} | HEADERS
    body = await request.body()
    if body:
        body = json.dumps(_rewrite_request(json.loads(body))).encode()
    upstream = await CLIENT.send(
        CLIENT.build_request(request.method, f"{GATEWAY}/mcp", content=body, headers=headers), stream=True
    )
    keep = {k: v for k, v in upstream.headers.items() if k.lower() in PASS}
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        # Server-sent events (a GET stream, or a POST answered as a stream): relay event by event.
        async def events() -> AsyncIterator[bytes]:
            buffer = ""
            try:
                async for text in upstream.aiter_text():
                    buffer += text.replace("\r\n", "\n")
                    while "\n\n" in buffer:
                        event, buffer = buffer.split("\n\n", 1)
                        yield (_rewrite_sse(event) + "\n\n").encode()
            except httpx.HTTPError:
                pass
            finally:
                await upstream.aclose()

        return StreamingResponse(events(), status_code=upstream.status_code, headers=keep)
    content = await upstream.aread()
    await upstream.aclose()
    if upstream.headers.get("content-type", "").startswith("application/json") and content:
        content = json.dumps(_rewrite_response(json.loads(content))).encode()
    return Response(content, status_code=upstream.status_code, headers=keep)


app = Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST", "DELETE"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8100, log_level="warning")
