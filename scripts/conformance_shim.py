"""A header-injecting shim for running the MCP conformance suite through the gateway (not used in CI).

The suite cannot send custom headers and expects the fixture's own tool names, so this
forwards `/mcp` to the gateway adding `Tenant-ID` and `Authorization`, prefixes tool names in
`tools/call` with `<upstream>__`, and in `tools/list` results keeps only that upstream's tools,
without the prefix. Everything else passes through unchanged.

    GATEWAY=http://127.0.0.1:8000 TENANT_ID=... API_KEY=... UPSTREAM=fx \\
        .venv/bin/python scripts/conformance_shim.py 8100
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
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


async def mcp(request: Request) -> Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() in PASS} | HEADERS
    body = await request.body()
    if body:
        body = json.dumps(_rewrite_request(json.loads(body))).encode()
    async with httpx.AsyncClient(timeout=60) as client:
        upstream = await client.request(request.method, f"{GATEWAY}/mcp", content=body, headers=headers)
    content = upstream.content
    if upstream.headers.get("content-type", "").startswith("application/json") and content:
        content = json.dumps(_rewrite_response(json.loads(content))).encode()
    keep = {k: v for k, v in upstream.headers.items() if k.lower() in PASS}
    return Response(content, status_code=upstream.status_code, headers=keep)


app = Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST", "DELETE"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8100, log_level="warning")
