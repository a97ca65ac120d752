"""A header-injecting, name-rewriting shim for running the MCP conformance suite through the gateway.

The suite cannot send custom headers and expects the fixture's own names, while the gateway
namespaces everything an upstream `fx` offers (docs/conformance.md): its tool or prompt `t` is
`fx__t`, its resource URI or URI template `u` is `fx+u`. This forwards `/mcp` to the gateway
(relaying server-sent events as they come) adding `Tenant-ID` and `Authorization`, and rewrites:

- requests: `tools/call` and `prompts/get` names get `fx__`; `resources/read`, `resources/subscribe`
  and `resources/unsubscribe` URIs get `fx+`; a `completion/complete` reference gets either,
  by its type (`ref/prompt` name, `ref/resource` uri);
- answers: tool, prompt, resource and template lists keep only `fx`'s entries, unprefixed (the
  gateway's built-ins, e.g. `tenantry://data/{key}`, are hidden: the suite does not know them);
  the URIs of read contents, of resources embedded in or linked from tool results and prompt
  messages, and of `notifications/resources/updated` lose `fx+`.

Host and Origin are forwarded as the suite sent them, so the gateway's DNS-rebinding check sees
what the suite meant it to see. Everything else passes through unchanged.

    GATEWAY=http://127.0.0.1:8000 TENANT_ID=... API_KEY=... UPSTREAM=fx \\
        .venv/bin/python scripts/conformance_shim.py 8100
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

GATEWAY = os.environ.get("GATEWAY", "http://127.0.0.1:8000")
UPSTREAM = os.environ.get("UPSTREAM", "fx")
NAME = UPSTREAM + "__"  # tools and prompts
URI = UPSTREAM + "+"  # resources and resource templates
HEADERS = {"Tenant-ID": os.environ["TENANT_ID"], "Authorization": f"Bearer {os.environ['API_KEY']}"}
PASS = {"accept", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id", "mcp-method", "mcp-name"}
# Host and Origin only go in: the gateway's DNS-rebinding check judges the suite's own values.
PASS_IN = PASS | {"host", "origin"}
URI_METHODS = {"resources/read", "resources/subscribe", "resources/unsubscribe"}
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def _rewrite_request(message: Any) -> Any:
    if isinstance(message, list):
        return [_rewrite_request(m) for m in message]
    if not isinstance(message, dict) or not isinstance(message.get("params"), dict):
        return message
    method, params = message.get("method"), message["params"]
    if method in ("tools/call", "prompts/get") and isinstance(params.get("name"), str):
        params["name"] = NAME + params["name"]
    elif method in URI_METHODS and isinstance(params.get("uri"), str):
        params["uri"] = URI + params["uri"]
    elif method == "completion/complete" and isinstance(ref := params.get("ref"), dict):
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            ref["name"] = NAME + ref["name"]
        elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            ref["uri"] = URI + ref["uri"]
    return message


def _keep_ours(entries: list[Any], field: str, prefix: str) -> list[Any]:
    """The entries whose `field` carries `prefix` (this upstream's), with the prefix taken off."""
    kept = []
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get(field), str) and entry[field].startswith(prefix):
            entry[field] = entry[field].removeprefix(prefix)
            kept.append(entry)
    return kept


# Result member -> (the field that names an entry, the prefix the gateway gave it).
LISTINGS = {
    "tools": ("name", NAME),
    "prompts": ("name", NAME),
    "resources": ("uri", URI),
    "resourceTemplates": ("uriTemplate", URI),
}


def _unprefix_uri(holder: Any) -> None:
    if isinstance(holder, dict) and isinstance(holder.get("uri"), str):
        holder["uri"] = holder["uri"].removeprefix(URI)


def _rewrite_response(message: Any) -> Any:
    if isinstance(message, list):
        return [_rewrite_response(m) for m in message]
    if not isinstance(message, dict):
        return message
    if message.get("method") == "notifications/resources/updated":
        _unprefix_uri(message.get("params"))
    result = message.get("result")
    if not isinstance(result, dict):
        return message
    for member, (field, prefix) in LISTINGS.items():
        if isinstance(result.get(member), list):
            result[member] = _keep_ours(result[member], field, prefix)
    # A resources/read answer (a tool result's is `content`, singular).
    if isinstance(result.get("contents"), list):
        for contents in result["contents"]:
            _unprefix_uri(contents)
    # Resources embedded in (or linked from) a tool result or a prompt's messages carry gateway URIs too.
    blocks: list[Any] = result["content"] if isinstance(result.get("content"), list) else []
    if isinstance(result.get("messages"), list):
        blocks = [m.get("content") for m in result["messages"] if isinstance(m, dict)]
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "resource":
            _unprefix_uri(block.get("resource"))
        elif isinstance(block, dict) and block.get("type") == "resource_link":
            _unprefix_uri(block)
    return message


def _mirrored_name(body: bytes) -> str | None:
    """What the `Mcp-Name` header must mirror of a rewritten request (2026-07-28 clients send it)."""
    with contextlib.suppress(ValueError):
        message = json.loads(body)
        if isinstance(message, dict) and (key := NAME_BEARING.get(message.get("method", ""))):
            value = message.get("params", {}).get(key)
            return value if isinstance(value, str) else None
    return None


def _rewrite_body(body: bytes, rewrite: Callable[[Any], Any]) -> bytes:
    try:
        return json.dumps(rewrite(json.loads(body))).encode()
    except ValueError:
        return body  # not JSON: the gateway answers it as it should


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
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower() in PASS_IN} | HEADERS
    body = await request.body()
    if body:
        body = _rewrite_body(body, _rewrite_request)
        if "mcp-name" in headers:
            headers["mcp-name"] = _mirrored_name(body) or headers["mcp-name"]
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
        content = _rewrite_body(content, _rewrite_response)
    return Response(content, status_code=upstream.status_code, headers=keep)


app = Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST", "DELETE"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8100, log_level="warning")
