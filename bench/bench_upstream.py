"""tools/call (or resources/read) to an upstream MCP server through the gateway, next to the same request
made to it directly.

    .venv/bin/python bench/bench_upstream.py [--read] [--concurrency 1,32] [--duration 5] [--warmup 1]

In one run: recreates and migrates `tenantry_bench`, makes a tenant and key, starts
`bench/bare_server.py` (the upstream) and the gateway as uvicorn subprocesses (one worker each),
registers the bare server as the tenant's upstream `bare`, then drives `data_get` on the bare
server and `bare__data_get` through the gateway with the same raw keep-alive HTTP/1.1 client,
checking every answer; with `--read`, reads the resource `bench://value` there and `bare+bench://value`
through the gateway (authorised, metered, guarded, audited and in the ledger before the answer, like a
call). Prints req/s and p50/p99 for both, the added p50 latency (target < 2 ms) and the throughput ratio
at each concurrency. With `--openapi`, the gateway side calls `rest__data_get` instead: the same value
from the bare server's REST route, registered as an upstream of kind `openapi` (its document fetched from
`/rest/openapi.json`), so the added p50 is that of a REST API behind the gateway. Setup, servers and
client are bench_gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bare_server import RESOURCE_TEXT, RESOURCE_URI
from bench_gateway import (
    BENCH,
    KEY,
    RawHttpConnection,
    RunResult,
    call_body,
    check_response,
    new_loop,
    prepare_database,
    print_table,
    py_spy,
    request_headers,
    server_env,
    start_server,
    stop_server,
    timed_call,
    wait_healthy,
)


def read_body(uri: str) -> bytes:
    message = {"jsonrpc": "2.0", "id": 0, "method": "resources/read", "params": {"uri": uri}}
    return json.dumps(message, separators=(",", ":")).encode()


def check_read(status: int, payload: bytes, request_id: int) -> str | None:
    """None if this is the resource's contents for `request_id` (under either name), else what is wrong."""
    if status != 200:
        return f"HTTP {status}: {payload[:200]!r}"
    try:
        message = json.loads(payload)
        contents = message["result"]["contents"]
    except (ValueError, KeyError, TypeError):
        return f"not a read result: {payload[:200]!r}"
    if message.get("id") != request_id:
        return f"answer for id {message.get('id')!r}, expected {request_id}"
    if len(contents) != 1 or contents[0].get("text") != RESOURCE_TEXT:
        return f"unexpected contents: {json.dumps(contents)[:200]}"
    return None


async def drive(
    name: str, port: int, headers: dict[str, str], target: str, conc: int, warmup: float, duration: float
) -> RunResult:
    """`target`: a tool to call with the benchmark's key, or a resource URI to read (`scheme://...`)."""
    result = RunResult(name, conc, duration)
    read = "://" in target
    body = read_body(target) if read else call_body("legacy", 0, target, {"key": KEY})
    check = check_read if read else check_response
    prefix, _, suffix = body.partition(b'"id":0')
    perf = time.perf_counter
    start = perf() + warmup
    end = start + duration

    async def worker(index: int) -> None:
        conn = RawHttpConnection("127.0.0.1", port, "/mcp", headers)
        request_id = index * 10_000_000
        try:
            while perf() < end:
                request_id += 1
                body = b'%s"id":%d%s' % (prefix, request_id, suffix)
                await timed_call(conn, body, request_id, result, start, end, check=check)
        finally:
            await conn.close()

    await asyncio.gather(*(worker(i) for i in range(conc)))
    return result


def register_upstream(gateway_port: int, admin_key: str, tenant_id: str, upstream: dict[str, str]) -> None:
    body = json.dumps(upstream).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway_port}/api/tenants/{tenant_id}/upstreams",
        data=body,
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201, response.read()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--read", action="store_true", help="read a resource instead of calling a tool")
    p.add_argument("--openapi", action="store_true", help="through the gateway, call the REST API upstream `rest`")
    p.add_argument("--profile", type=Path, metavar="DIR", help="also profile the gateway with py-spy into DIR")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    env = {**server_env(), "TENANTRY_UPSTREAM_ALLOW_LOOPBACK": "true"}
    with asyncio.Runner(loop_factory=new_loop) as runner:
        tenant_id, api_key = runner.run(prepare_database(env))
        logdir = Path(tempfile.mkdtemp(prefix="tenantry-bench-upstream-"))
        servers = []
        try:
            bare = start_server("upstream", ["bare_server:app", "--app-dir", str(BENCH)], env, logdir)
            servers.append(bare)
            gateway = start_server("gateway", ["tenantry.app:create_app", "--factory"], env, logdir)
            servers.append(gateway)
            for server in servers:
                wait_healthy(server)
            origin = f"http://127.0.0.1:{bare.port}"
            admin_key = env["TENANTRY_ADMIN_API_KEY"]
            register_upstream(gateway.port, admin_key, tenant_id, {"name": "bare", "url": f"{origin}/mcp"})
            rest = {"name": "rest", "transport": "openapi", "url": f"{origin}/rest/openapi.json"}
            register_upstream(gateway.port, admin_key, tenant_id, rest)
            direct_headers = request_headers("legacy", None, None)
            gateway_headers = request_headers("legacy", tenant_id, api_key)
            direct, through = (RESOURCE_URI, f"bare+{RESOURCE_URI}") if args.read else ("data_get", "bare__data_get")
            if args.openapi:
                through = "rest__data_get"
            results: list[RunResult] = []
            for conc in levels:
                for name, port, headers, target in (
                    ("direct", bare.port, direct_headers, direct),
                    ("gateway", gateway.port, gateway_headers, through),
                ):
                    results.append(runner.run(drive(name, port, headers, target, conc, args.warmup, args.duration)))
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                conc = max(levels)
                with py_spy(gateway.pid, args.profile / "gateway", args.duration):
                    runner.run(drive("gateway", gateway.port, gateway_headers, through, conc, 0, args.duration))
                print(f"\nprofile (c={conc}): {args.profile}/gateway.folded")
        finally:
            for server in servers:
                stop_server(server)
    print_table(results)
    by = {(r.server, r.concurrency): r for r in results}
    print(f"\n{'conc':>4} {'added p50 ms':>13} {'gateway/direct req/s':>21}")
    for conc in levels:
        g, d = by[("gateway", conc)], by[("direct", conc)]
        ratio = g.rps / d.rps if d.rps else float("nan")
        print(f"{conc:>4} {g.percentile_ms(50) - d.percentile_ms(50):>+13.2f} {ratio:>20.2f}x")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
