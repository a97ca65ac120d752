"""Where one gateway tools/call spends its CPU, measured in-process: no sockets, no load generator.

    .venv/bin/python bench/layers.py [--calls 1000] [--rounds 5] [--protocols legacy,modern] [--no-apps]

Recreates the `tenantry_bench` database, as `bench_gateway.py` does; PostgreSQL and Redis must be up.

Part 1 drives each ASGI app (the bare SDK server, the gateway, and the ablations in
`gateway_variants.py`) with the same tools/call data_get, one call at a time, and reports this
process's CPU µs per call (PostgreSQL's work is another process and not counted) and wall µs per
call. Apps take turns, round after round; the table shows the minimum and the median over rounds,
the minimum being the least disturbed by whatever else the machine is doing.

Part 2 times the pieces of the gateway's path on their own: authentication, argument
validation, metrics, result conversion, and the data_get transaction through SQLAlchemy next to
the same statements on a bare asyncpg connection (4 and 3 round trips).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_gateway as bg  # noqa: E402

Timing = tuple[float, float]  # (cpu µs, wall µs) per call


class AsgiClient:
    """Calls an ASGI app the way uvicorn would for one POST /mcp, without a socket."""

    def __init__(self, app: Any, headers: dict[str, str], state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def post(self, body: bytes) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/mcp",
            "raw_path": b"/mcp",
            "query_string": b"",
            "root_path": "",
            "headers": [*self.headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
            "state": dict(self.state),
        }
        status = 0
        chunks: list[bytes] = []
        done = asyncio.Event()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    done.set()

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


async def timed(n: int, op: Callable[[int], Awaitable[Any]]) -> Timing:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        await op(i)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / n * 1e6, wall / n * 1e6


def summarize(name: str, samples: list[Timing], width: int) -> str:
    cpus, walls = [s[0] for s in samples], [s[1] for s in samples]
    return (
        f"{name:<{width}} {min(cpus):>8.0f} {statistics.median(cpus):>8.0f}"
        f" {min(walls):>9.0f} {statistics.median(walls):>9.0f}"
    )


async def part1(
    calls: int, rounds: int, tenant_id: str, api_key: str, protocols: list[str]
) -> dict[tuple[str, str], list[Timing]]:
    import bare_server
    import gateway_variants
    from tenantry.app import create_app
    from tenantry.settings import Settings

    factories: dict[str, Callable[[], Any]] = {
        "bare": lambda: bare_server.app,
        "gateway": lambda: create_app(Settings()),
        **{
            name: getattr(gateway_variants, name)
            for name in gateway_variants.VARIANTS
            if name not in gateway_variants.SUBPROCESS_ONLY
        },
    }
    results: dict[tuple[str, str], list[Timing]] = {}
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[tuple[str, str], tuple[AsgiClient, bytes]] = {}
        for name, factory in factories.items():
            app = factory()
            state = dict(await stack.enter_async_context(app.router.lifespan_context(app)) or {})
            for protocol in protocols:
                headers = bg.request_headers(protocol, None if name == "bare" else tenant_id, None)
                if name != "bare":
                    headers["Authorization"] = f"Bearer {api_key}"
                if protocol == "modern":
                    headers["Mcp-Name"] = "data_get"
                client = AsgiClient(app, headers, state)
                clients[name, protocol] = client, bg.call_body(protocol, 1, "data_get", {"key": bg.KEY})
                results[name, protocol] = []
            if name != "bare":
                client = AsgiClient(app, bg.request_headers("legacy", tenant_id, api_key), state)
                status, payload = await client.post(
                    bg.call_body("legacy", 1, "data_put", {"key": bg.KEY, "value": bg.VALUE})
                )
                if status != 200 or b'"isError":true' in payload:
                    raise RuntimeError(f"{name} data_put failed: {payload[:300]!r}")

        async def call(client: AsgiClient, body: bytes) -> None:
            status, payload = await client.post(body)
            problem = bg.check_response(status, payload, 1)
            if problem is not None:
                raise RuntimeError(problem)

        for client, body in clients.values():  # warm every path (imports, caches, pools) before timing
            await timed(max(50, calls // 10), lambda _, c=client, b=body: call(c, b))
        for _ in range(rounds):
            for key, (client, body) in clients.items():
                results[key].append(await timed(calls, lambda _, c=client, b=body: call(c, b)))
    return results


async def part2(calls: int, rounds: int, tenant_id: str, api_key: str) -> dict[str, list[Timing]]:
    import uuid

    import asyncpg
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken
    from starlette.datastructures import Headers

    from tenantry.app import build_services
    from tenantry.auth.middleware import authenticate
    from tenantry.gateway.outcomes import ToolOutcome
    from tenantry.settings import Settings
    from tenantry.tools.base import ToolContext
    from tenantry.tools.data_store import data_get, data_put, tools

    settings = Settings()
    services = build_services(settings)
    put_args, key_args = (tool.arguments for tool in tools(settings)[:2])
    tid = uuid.UUID(tenant_id)
    headers = Headers(raw=[(b"tenant-id", tenant_id.encode()), (b"authorization", f"Bearer {api_key}".encode())])
    principal = await authenticate(services.resolver, headers)
    ctx = ToolContext(principal=principal, db=services.db, settings=settings, meter=services.meter)
    await data_put(ctx, put_args.model_validate({"key": bg.KEY, "value": bg.VALUE}))
    args = key_args.model_validate({"key": bg.KEY})
    result = await data_get(ctx, args)
    raw_url = settings.app_database_url.replace("postgresql+asyncpg://", "postgresql://")
    raw = await asyncpg.connect(raw_url)
    select = "SELECT value, size_bytes, updated_at FROM tenant_data WHERE key = $1"
    begin_and_bind = f"BEGIN; SELECT set_config('tenantry.tenant_id', '{tid}', true)"  # tid is a parsed UUID

    async def raw_4rt(_: int) -> None:
        async with raw.transaction():
            await raw.execute("SELECT set_config('tenantry.tenant_id', $1, true)", str(tid))
            row = await raw.fetchrow(select, bg.KEY)
        assert row is not None

    async def raw_3rt(_: int) -> None:
        await raw.execute(begin_and_bind)
        try:
            row = await raw.fetchrow(select, bg.KEY)
        finally:
            await raw.execute("COMMIT")
        assert row is not None

    async def noop(_: int) -> None:
        return None

    # The HTTP layers in front of the MCP endpoint, ending in a no-op endpoint instead of the SDK.
    from starlette.applications import Starlette
    from starlette.routing import Route

    from tenantry.app import create_app
    from tenantry.auth.middleware import TenantAuth

    class NoopEndpoint:  # an ASGI app, not a function: Starlette passes it (scope, receive, send) as is
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"{}"})

    endpoint = NoopEndpoint()
    fastapi_app = create_app(settings)
    for route in fastapi_app.router.routes:
        if isinstance(route, Route) and route.path == "/mcp":
            route.app = endpoint
    plain_app = Starlette(routes=[Route("/mcp", endpoint=endpoint, methods=["GET", "POST", "DELETE"])])
    auth_app = TenantAuth(endpoint, services.resolver, services.metrics)
    http_headers = bg.request_headers("legacy", tenant_id, api_key)
    body = bg.call_body("legacy", 1, "data_get", {"key": bg.KEY})
    fastapi_client = AsgiClient(fastapi_app, http_headers, {})
    plain_client = AsgiClient(plain_app, http_headers, {})
    auth_client = AsgiClient(auth_app, http_headers, {})

    ops: dict[str, Callable[[int], Awaitable[Any]]] = {
        "FastAPI app -> no-op /mcp": lambda _: fastapi_client.post(body),
        "Starlette -> no-op /mcp": lambda _: plain_client.post(body),
        "TenantAuth -> no-op (cached key)": lambda _: auth_client.post(body),
        "authenticate (cached)": lambda _: authenticate(services.resolver, headers),
        "AuthenticatedUser()": lambda _: noop(
            AuthenticatedUser(AccessToken(token="", client_id=tenant_id, scopes=[], subject=tenant_id))
        ),
        "KeyArgs.model_validate": lambda _: noop(key_args.model_validate({"key": bg.KEY})),
        "metrics.observe_tool_call": lambda _: noop(
            services.metrics.observe_tool_call(tid, "data_get", "ok", time.perf_counter())
        ),
        "ToolOutcome.to_mcp": lambda _: noop(ToolOutcome(result=result).to_mcp()),
        "data_get via SQLAlchemy (4 RT)": lambda _: data_get(ctx, args),
        "same SQL, bare asyncpg (4 RT)": raw_4rt,
        "BEGIN+bind in one (3 RT)": raw_3rt,
        "one round trip (SELECT 1)": lambda _: raw.fetchval("SELECT 1"),
    }
    out: dict[str, list[Timing]] = {name: [] for name in ops}
    try:
        for op in ops.values():
            await timed(max(50, calls // 10), op)
        for _ in range(rounds):
            for name, op in ops.items():
                out[name].append(await timed(calls, op))
    finally:
        await raw.close()
        await services.db.dispose()
        await services.aclose_redis()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=1000, help="calls per app per round (default 1000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    p.add_argument("--protocols", default="legacy,modern", help="comma-separated: legacy, modern (default both)")
    p.add_argument("--no-apps", dest="apps", action="store_false", help="skip part 1 (the whole apps)")
    args = p.parse_args(argv)
    args.protocols = [v for v in args.protocols.split(",") if v]
    if not args.protocols or set(args.protocols) - {"legacy", "modern"}:
        p.error("--protocols takes legacy and/or modern")
    env = bg.server_env()
    os.environ.update({k: v for k, v in env.items() if k.startswith("TENANTRY_")})

    async def run() -> None:
        tenant_id, api_key = await bg.prepare_database(env)
        apps = await part1(args.calls, args.rounds, tenant_id, api_key, args.protocols) if args.apps else {}
        pieces = await part2(args.calls, args.rounds, tenant_id, api_key)
        width = max(len(n) for n in [*(f"{a} ({p})" for a, p in apps), *pieces])
        print(f"{args.calls} sequential calls x {args.rounds} rounds, in-process, µs per call")
        print(f"\n{'app (protocol)':<{width}} {'cpu min':>8} {'cpu med':>8} {'wall min':>9} {'wall med':>9}")
        for (name, protocol), samples in apps.items():
            print(summarize(f"{name} ({protocol})", samples, width))
        for protocol in args.protocols if apps else []:
            gateway = min(s[0] for s in apps["gateway", protocol])
            print(f"\nlayer cost, {protocol} (gateway cpu min - variant cpu min; negative = variant costs more):")
            for (name, proto), samples in apps.items():
                if proto == protocol and name not in ("bare", "gateway"):
                    print(f"  {name:<{width - 2}} {gateway - min(s[0] for s in samples):>+8.0f}")
        print(f"\n{'piece':<{width}} {'cpu min':>8} {'cpu med':>8} {'wall min':>9} {'wall med':>9}")
        for name, samples in pieces.items():
            print(summarize(name, samples, width))

    with asyncio.Runner(loop_factory=bg.new_loop) as runner:
        runner.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
