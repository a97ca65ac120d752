"""`tenantry call` and `tenantry probe`: an MCP client that sends the two headers."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from tenantry.cli.common import EXIT_TOOL_ERROR, emit, json_object
from tenantry.client import call_tool, list_tools, probe
from tenantry.settings import Settings

# --- call ------------------------------------------------------------------------------------------


def cmd_call(args: argparse.Namespace, settings: Settings) -> int:

    headers = {"Authorization": f"Bearer {args.key}"}
    if args.tenant:
        headers["Tenant-ID"] = args.tenant
    url = args.url or f"http://{settings.host}:{settings.port}/{'sse' if args.transport == 'sse' else 'mcp'}"
    if args.tool is None:
        tools = asyncio.run(list_tools(url, headers, args.transport))
        emit(args, {"tools": tools}, "\n".join(f"{t['name']:<14} {t.get('description', '')}" for t in tools))
        return 0
    arguments = json_object(args.args, "--args", "invalid_arguments")
    result = asyncio.run(call_tool(url, headers, args.transport, args.tool, arguments))
    text = "\n".join(c.get("text", json.dumps(c)) for c in result.get("content", []))
    emit(args, result, text)
    return EXIT_TOOL_ERROR if result.get("isError") else 0


def cmd_probe(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 ok, 1 degraded, 2 down: what a monitoring system's check wants."""
    headers = {"Authorization": f"Bearer {args.key}"}
    if args.tenant:
        headers["Tenant-ID"] = args.tenant
    arguments = json_object(args.args, "--args", "invalid_arguments")

    async def run() -> dict[str, Any]:
        async with asyncio.timeout(args.timeout):
            return await probe(args.url, headers, tool=args.tool, arguments=arguments)

    try:
        report = asyncio.run(run())
    except TimeoutError:
        report = {
            "status": "down",
            "url": args.url,
            "steps": [{"step": "timeout", "ok": False, "ms": args.timeout * 1000}],
        }
    lines = [
        f"{s['step']:<11} {'ok  ' if s['ok'] else 'FAIL'} {s['ms']:>8.1f} ms  {s.get('detail') or ''}".rstrip()
        for s in report["steps"]
    ]
    emit(args, report, "\n".join([*lines, f"status: {report['status']}"]))
    return {"ok": 0, "degraded": 1}.get(report["status"], 2)
