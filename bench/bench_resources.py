"""resources/read of an upstream's resource through the gateway, next to the same read made to it directly.

    .venv/bin/python bench/bench_resources.py [--concurrency 1,16] [--duration 5] [--warmup 1]

In one run: recreates and migrates `tenantry_bench`, makes a tenant and key, starts `bench/bare_server.py`
(the upstream, which serves one resource `bench://value`) and the gateway as uvicorn subprocesses (one
worker each), registers the bare server as the tenant's upstream `bare`, then reads `bench://value` on
the bare server and `bare+bench://value` through the gateway (authorised, metered, guarded, audited, in
the ledger before the answer) with the same raw keep-alive HTTP/1.1 client, checking every answer. Prints
req/s and p50/p99 for both, the added p50 latency and the throughput ratio at each concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bare_server import RESOURCE_TEXT, RESOURCE_URI
from bench_gateway import (
    BENCH,
    RawHttpConnection,
    RunResult,
    new_loop,
    prepare_database,
    print_table,
    request_headers,
    server_env,
    start_server,
    stop_server,
    timed_call,
    wait_healthy,
)
from bench_upstream import register_upstream


def _read_body(uri: str) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": 0, "method": "resources/read", "params": {"uri": uri}}, separators=(",", ":")
    ).encode()


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
    name: str, port: int, headers: dict[str, str], uri: str, conc: int, warmup: float, duration: float
) -> RunResult:
    result = RunResult(name, conc, duration)
    prefix, _, suffix = _read_body(uri).partition(b'"id":0')
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
                await timed_call(conn, body, request_id, result, start, end, check=check_read)
        finally:
            await conn.close()

    await asyncio.gather(*(worker(i) for i in range(conc)))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    env = {**server_env(), "TENANTRY_UPSTREAM_ALLOW_LOOPBACK": "true"}
    with asyncio.Runner(loop_factory=new_loop) as runner:
        tenant_id, api_key = runner.run(prepare_database(env))
        logdir = Path(tempfile.mkdtemp(prefix="tenantry-bench-resources-"))
        servers = []
        try:
            bare = start_server("upstream", ["bare_server:app", "--app-dir", str(BENCH)], env, logdir)
            servers.append(bare)
            gateway = start_server("gateway", ["tenantry.app:create_app", "--factory"], env, logdir)
            servers.append(gateway)
            for server in servers:
                wait_healthy(server)
            upstream_url = f"http://127.0.0.1:{bare.port}/mcp"
            register_upstream(gateway.port, env["TENANTRY_ADMIN_API_KEY"], tenant_id, upstream_url)
            direct = request_headers("legacy", None, None)
            through = request_headers("legacy", tenant_id, api_key)
            results: list[RunResult] = []
            for conc in levels:
                results.append(
                    runner.run(drive("direct", bare.port, direct, RESOURCE_URI, conc, args.warmup, args.duration))
                )
                gateway_uri = f"bare+{RESOURCE_URI}"
                results.append(
                    runner.run(drive("gateway", gateway.port, through, gateway_uri, conc, args.warmup, args.duration))
                )
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
