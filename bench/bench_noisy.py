"""A noisy neighbour: how much a tenant hammering past its quota slows another tenant's calls.

    .venv/bin/python bench/bench_noisy.py [--rounds 3] [--duration 5] [--victim 4] [--noisy 12]

One gateway (uvicorn, one worker, as bench_gateway.py serves it). The victim (the bench tenant, limits
that never refuse) calls data_get with --victim workers, alone, then while a free-plan tenant whose quota
is spent (1 call per hour) floods the same gateway with --noisy workers from a process of its own (so the
flood does not share the victim's event loop), paced at --flood-rate requests per second (0: as fast as
the workers go). Rounds alternate; the table shows the victim's p50 and p99 in each phase and their ratio
(noisy / alone), and what the noisy tenant got. A third phase sends the same flood to a bare ASGI
server beside the gateway instead: on two shared cores the flood's own client and the kernel slow the
victim too, and that ratio is the part no gateway can remove. The default rate is about what the issue
measured an attacker sending (11,330 requests in 34 s). PostgreSQL and Redis must be running; the database
`tenantry_bench` is recreated.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_gateway as bg  # noqa: E402


async def noisy_tenant(env: dict[str, str]) -> tuple[str, str]:
    """A free-plan tenant whose quota is one call per hour: after the first, every call is refused."""
    from tenantry import tenants as tenant_service
    from tenantry.auth import api_keys
    from tenantry.db.engine import Database
    from tenantry.settings import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{k.removeprefix("TENANTRY_").lower(): v for k, v in env.items() if k.startswith("TENANTRY_")},
    )
    db = Database(settings)
    try:
        async with db.system() as conn:
            tenant = await tenant_service.create_tenant(conn, "noisy", "free")
            await tenant_service.update_tenant(conn, tenant.id, limits={"calls_per_window": 1})
            _, secret = await api_keys.create_key(conn, tenant.id, "noisy")
    finally:
        await db.dispose()
    return str(tenant.id), secret


async def flood(port: int, tenant_id: str, api_key: str, workers: int, rate: float, seconds: float) -> dict[int, int]:
    """The noisy tenant: `workers` keep-alive connections calling data_get, paced to `rate` req/s in all."""
    headers = bg.request_headers("legacy", tenant_id, api_key)
    connections = [bg.RawHttpConnection("127.0.0.1", port, "/mcp", headers) for _ in range(workers)]
    body = bg.call_body("legacy", 1, "data_get", {"key": bg.KEY})
    interval = workers / rate if rate > 0 else 0.0
    perf = time.perf_counter
    until = perf() + seconds
    statuses: collections.Counter[int] = collections.Counter()

    async def worker(index: int, conn: bg.RawHttpConnection) -> None:
        next_at = perf() + interval * index / workers
        while perf() < until:
            if interval:
                await asyncio.sleep(max(0.0, next_at - perf()))
                next_at = max(next_at + interval, perf() - interval)  # late: no burst to catch up
            status, _ = await conn.post(body)
            statuses[status] += 1

    try:
        await asyncio.gather(*(worker(i, c) for i, c in enumerate(connections)))
    finally:
        for conn in connections:
            await conn.close()
    return dict(statuses)


async def cpu_per_refusal(args: argparse.Namespace, server: bg.ServerProcess, tenant_id: str, api_key: str) -> float:
    """The server's CPU per refused request (µs), under an unpaced flood alone: what each one costs
    every other tenant, steadier than latency on a shared machine."""
    unpaced = argparse.Namespace(**{**vars(args), "flood_rate": 0.0})
    before = bg.CpuSnapshot.take(server.pid)
    flooding = start_flood(unpaced, server.port, tenant_id, api_key, args.duration)
    out, _ = await asyncio.to_thread(flooding.communicate)
    server_cpu, _, _ = bg.CpuSnapshot.take(server.pid).since(before)
    return (server_cpu or 0.0) / max(1, sum(json.loads(out).values())) * 1e6


# The reference: a server that answers every request at once with a fixed JSON-RPC error, the least any
# Python server can do per request. A flood at it costs the victim only what the machine's two cores
# shared with the flood's own client and the kernel cost; the gateway's share is the rest.
REFERENCE_APP = """
BODY = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32029,"message":"rate_limited"}}'
HEAD = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEAD})
    await send({"type": "http.response.body", "body": BODY})
"""


def start_reference(logdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    (logdir / "reference_app.py").write_text(REFERENCE_APP)
    port = bg.free_port()
    command = [sys.executable, "-m", "uvicorn", "reference_app:app", "--port", str(port), "--log-level", "warning"]
    command += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    proc = subprocess.Popen(command, cwd=logdir)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc, port
        time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("the reference server did not start")


def start_flood(
    args: argparse.Namespace, port: int, tenant_id: str, api_key: str, seconds: float
) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--flood-into", str(port), tenant_id, api_key]
    command += ["--noisy", str(args.noisy), "--flood-rate", str(args.flood_rate), "--duration", str(seconds)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


async def run(args: argparse.Namespace) -> int:
    env = bg.server_env()
    victim_id, victim_key = await bg.prepare_database(env)
    noisy_id, noisy_key = await noisy_tenant(env)
    logdir = Path(tempfile.mkdtemp(prefix="tenantry-noisy-"))
    server = bg.start_server("gateway", ["tenantry.app:create_app", "--factory"], env, logdir)
    reference, reference_port = start_reference(logdir)
    try:
        bg.wait_healthy(server)
        headers = bg.request_headers("legacy", victim_id, victim_key)
        victim = bg.Target("victim", server.port, headers, server.proc.pid)
        await bg.call_once(victim, "legacy", "data_put", {"key": bg.KEY, "value": bg.VALUE})
        refusal_cpu = await cpu_per_refusal(args, server, noisy_id, noisy_key)
        alone: list[bg.RunResult] = []
        crowded: list[bg.RunResult] = []
        beside: list[bg.RunResult] = []  # the same flood at the reference server instead
        sent: list[dict[int, int]] = []
        for _ in range(args.rounds):
            alone.append(await bg.drive(victim, "legacy", args.victim, 1.0, args.duration, "raw"))
            for port, into in ((server.port, crowded), (reference_port, beside)):
                flooding = start_flood(args, port, noisy_id, noisy_key, args.duration + 2.0)
                await asyncio.sleep(0.5)
                into.append(await bg.drive(victim, "legacy", args.victim, 1.0, args.duration, "raw"))
                out, _ = await asyncio.to_thread(flooding.communicate)
                if port == server.port:
                    sent.append({int(k): v for k, v in json.loads(out).items()})
    finally:
        reference.terminate()
        reference.wait(timeout=10)
        bg.stop_server(server)
    p50a = statistics.median(r.percentile_ms(50) for r in alone)
    p99a = statistics.median(r.percentile_ms(99) for r in alone)
    p50c = statistics.median(r.percentile_ms(50) for r in crowded)
    p99c = statistics.median(r.percentile_ms(99) for r in crowded)
    p50b = statistics.median(r.percentile_ms(50) for r in beside)
    p99b = statistics.median(r.percentile_ms(99) for r in beside)
    pace = f"{args.flood_rate:.0f} req/s" if args.flood_rate > 0 else "unpaced"
    print(f"victim: {args.victim} workers; noisy: {args.noisy} workers ({pace}), quota spent; {args.rounds} rounds")
    print(f"{'phase':<16}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'alone':<16}{statistics.median(r.rps for r in alone):>8.0f}{p50a:>9.2f}{p99a:>9.2f}")
    print(f"{'with the noisy':<16}{statistics.median(r.rps for r in crowded):>8.0f}{p50c:>9.2f}{p99c:>9.2f}")
    print(f"{'flood elsewhere':<16}{statistics.median(r.rps for r in beside):>8.0f}{p50b:>9.2f}{p99b:>9.2f}")
    print(f"victim p99 with / without the noisy tenant: {p99c / p99a:.2f}x (p50 {p50c / p50a:.2f}x)")
    print(
        f"the same flood at a bare server instead (the machine's share): {p99b / p99a:.2f}x (p50 {p50b / p50a:.2f}x);"
        f" the gateway's own share: {p99c / p99b:.2f}x (p50 {p50c / p50b:.2f}x)"
    )
    seconds = args.duration + 2.0
    rate = statistics.median(sum(s.values()) / seconds for s in sent)
    answers = collections.Counter[int]()
    for s in sent:
        answers.update(s)
    print(f"the noisy tenant sent {rate:.0f} req/s; HTTP statuses over all rounds: {dict(sorted(answers.items()))}")
    print(f"server CPU per refused request (unpaced flood, alone): {refusal_cpu:.0f} µs")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--victim", type=int, default=4, help="victim workers (default 4)")
    p.add_argument("--noisy", type=int, default=12, help="noisy workers (default 12)")
    p.add_argument("--flood-rate", type=float, default=400.0, help="noisy req/s in all; 0 = unpaced (default 400)")
    p.add_argument("--flood-into", nargs=3, metavar=("PORT", "TENANT", "KEY"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.flood_into:
        port, tenant_id, api_key = args.flood_into
        statuses = asyncio.run(flood(int(port), tenant_id, api_key, args.noisy, args.flood_rate, args.duration))
        print(json.dumps(statuses))
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
