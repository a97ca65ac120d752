"""tools/call throughput and latency of `data_get` through the full gateway, next to a bare MCP SDK server.

    .venv/bin/python bench/bench_gateway.py [--concurrency 1,16] [--duration 5] [--warmup 1]
                                            [--protocol legacy|modern] [--client raw|httpx]
                                            [--rounds N] [--variants all|a,b] [--only bare|gateway]
                                            [--profile DIR] [--redis-cluster] [--database NAME]

What it does, in one run:
1. recreates the database `tenantry_bench`, migrates it, creates a tenant and an API key;
2. starts the gateway (`uvicorn tenantry.app:create_app --factory`) and `bench/bare_server.py`
   as subprocesses on free loopback ports, one worker each, uvloop + httptools, no access log;
3. stores one value with a `data_put` tools/call through the gateway;
4. for each concurrency, drives each server for `--warmup` + `--duration` seconds with raw
   JSON-RPC `tools/call data_get` POSTs over persistent HTTP/1.1 connections, checks every
   response is a successful tool result carrying the stored value, and records latency;
5. prints a table (req/s, p50, p99, errors, and CPU per request of the server, of the PostgreSQL
   backends serving the bench database and of this load generator, plus the hypervisor's steal
   share as a noise indicator), then the gateway/bare ratios. Exits 1 if any response was wrong.

The machine is small and shared, so read `srv µs/req` (server CPU per call) alongside req/s: it
moves much less with background load. `--rounds N` repeats everything and reports, per server and
concurrency, the run with the median throughput. `--variants` also drives the gateway ablations
of `gateway_variants.py` and prints what each removed layer costs (gateway minus variant).

`--protocol legacy` sends `MCP-Protocol-Version: 2025-11-25` (the SDK's stateless handshake-era
path); `modern` sends `2026-07-28` with the per-request `_meta` envelope and the `Mcp-Method` /
`Mcp-Name` headers that path requires. Both servers are always driven the same way.
`--client httpx` swaps the raw asyncio-streams client for httpx (10-20x the client CPU per call;
kept to show why the default is raw).

`--redis-cluster` also starts a local three-master Redis Cluster (redis-server from the distribution,
free ports, a temporary directory, stopped at the end) and drives `gateway-rc`: the same gateway with
`TENANTRY_REDIS_CLUSTER` pointing at it, in the same run as `gateway` on the single Redis, so the two
compare under the same load on the machine. `--database` names the bench database (default
tenantry_bench; it is dropped and recreated).

`--profile DIR` adds one more run per server at the highest concurrency with py-spy attached,
writing DIR/{bare,gateway}.folded (collapsed stacks; needs `pip install py-spy`; the figures of that
run are perturbed by sampling and are not printed in the table).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
DB_NAME = "tenantry_bench"
REDIS_URL = "redis://127.0.0.1:6379/0"
KEY = "bench/value"
# Must match bare_server.VALUE so both servers answer the same bytes' worth of result.
VALUE: dict[str, Any] = {"hello": "world", "n": 42, "tags": ["a", "b", "c"]}
LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
STARTUP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 10.0

sys.path.insert(0, str(BENCH))

if TYPE_CHECKING:
    from tenantry.dev.redis_cluster import LocalCluster


# --- settings and setup ----------------------------------------------------------------------------


def server_env() -> dict[str, str]:
    """The environment both servers run with: the gateway reads TENANTRY_*, the bare server ignores it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    env.update(
        {
            "TENANTRY_ENVIRONMENT": "test",
            "TENANTRY_DATABASE_URL": f"{PG_SERVER}/{DB_NAME}",
            "TENANTRY_REDIS_URL": REDIS_URL,
            "TENANTRY_ADMIN_API_KEY": "bench-admin-key-0123456789abcdef",
            "TENANTRY_JWT_SECRET": "bench-jwt-secret-0123456789abcdef0123456789",
        }
    )
    return env


async def recreate_database(name: str) -> None:
    """Drop `name` (connections and all) and create it empty."""
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def prepare_database(env: dict[str, str]) -> tuple[str, str]:
    """Recreate and migrate the bench database; return (tenant id, API key)."""

    from tenantry import tenants as tenant_service
    from tenantry.auth import api_keys
    from tenantry.db.engine import Database
    from tenantry.db.migrate import migrate
    from tenantry.settings import Settings

    await recreate_database(DB_NAME)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{k.removeprefix("TENANTRY_").lower(): v for k, v in env.items() if k.startswith("TENANTRY_")},
    )
    await migrate(settings.database_url, app_role=settings.db_app_role)
    db = Database(settings)
    try:
        async with db.system() as c:
            tenant = await tenant_service.create_tenant(c, "bench", "pro")
            # Metered (every call goes through the Lua meter and the ledger) but never refused.
            limits = {"calls_per_window": 10**9, "requests_per_minute": 10**9, "max_concurrent": 10_000}
            await tenant_service.update_tenant(c, tenant.id, limits=limits)
            _, secret = await api_keys.create_key(c, tenant.id, "bench")
    finally:
        await db.dispose()
    return str(tenant.id), secret


# --- subprocess servers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_server(name: str, target: list[str], env: dict[str, str], logdir: Path) -> ServerProcess:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        *target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--lifespan",
        "on",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    # Each server its own Redis keys, so its own ledger stream and drain: with one shared stream,
    # every running server's drainer took a share of the events the driven one produced, moving
    # that CPU into processes that were not being measured (and onto the core the measured one needs).
    env = {**env, "TENANTRY_REDIS_KEY_PREFIX": f"bench-{name}"}
    log = logdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return ServerProcess(name, port, proc, log)


def wait_healthy(server: ServerProcess, timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll GET /health until it answers 200, the process dies, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200:
                return
            last = f"{resp.status} {body[:300]!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not healthy within {timeout}s (last: {last}):\n{server.log_tail()}")


def stop_server(server: ServerProcess) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=5)


# --- CPU accounting (Linux /proc; None elsewhere) --------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int) -> float | None:
    """utime + stime of one process in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _postgres_cpu() -> dict[int, float]:
    """CPU seconds of every PostgreSQL backend connected to the bench database (not other databases' work)."""
    found: dict[int, float] = {}
    marker = f" {DB_NAME} ".encode()
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                # A backend's title reads "postgres: 15/main: <role> <database> <client> <state>".
                title = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if not title.startswith(b"postgres:") or marker not in title:
                continue
            cpu = _proc_cpu(int(entry.name))
            if cpu is not None:
                found[int(entry.name)] = cpu
    return found


def _machine_ticks() -> tuple[int, int, int] | None:
    """(total, idle + iowait, steal) jiffies over all CPUs, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]), fields[3] + fields[4], steal


@dataclass
class CpuSnapshot:
    server: float | None
    postgres: dict[int, float]
    client: float
    machine: tuple[int, int, int] | None

    @classmethod
    def take(cls, server_pid: int) -> CpuSnapshot:
        return cls(_proc_cpu(server_pid), _postgres_cpu(), time.process_time(), _machine_ticks())

    def since(self, earlier: CpuSnapshot) -> tuple[float | None, float | None, float]:
        server = None if self.server is None or earlier.server is None else self.server - earlier.server
        # Backends that appeared during the window count in full; ones that vanished are lost (rare here).
        postgres = (
            sum(cpu - earlier.postgres.get(pid, 0.0) for pid, cpu in self.postgres.items()) if self.postgres else None
        )
        return server, postgres, self.client - earlier.client

    def steal_since(self, earlier: CpuSnapshot) -> float | None:
        """Share of CPU time the hypervisor took away during the window (noise indicator)."""
        if self.machine is None or earlier.machine is None:
            return None
        total = self.machine[0] - earlier.machine[0]
        return (self.machine[2] - earlier.machine[2]) / total if total else None


# --- the load generator ----------------------------------------------------------------------------


class ProtocolError(Exception):
    pass


class RawHttpConnection:
    """One persistent HTTP/1.1 connection doing POSTs, on bare asyncio streams (cheapest client per request)."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            sock = self._writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self._reader is not None
        self._writer.write(b"%s%d\r\n\r\n%s" % (self._head, len(body), body))
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = -1
        chunked = close = False
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if length >= 0:
            payload = await self._reader.readexactly(length)
        elif chunked:
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self._reader.readuntil(b"\r\n")
                    break
                parts.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
            payload = b"".join(parts)
        else:
            raise ProtocolError("response has neither Content-Length nor chunked encoding")
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
            self._reader = self._writer = None


class HttpxConnection:
    """The same interface over one shared httpx.AsyncClient (for comparing client overhead)."""

    def __init__(self, client: Any, url: str, headers: dict[str, str]) -> None:
        self._client, self._url, self._headers = client, url, headers

    async def post(self, body: bytes) -> tuple[int, bytes]:
        r = await self._client.post(self._url, content=body, headers=self._headers)
        return r.status_code, r.content

    async def close(self) -> None:
        return None


@dataclass
class Target:
    name: str
    port: int
    headers: dict[str, str]
    pid: int


@dataclass
class RunResult:
    server: str
    concurrency: int
    duration: float
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    server_cpu: float | None = None
    postgres_cpu: float | None = None
    client_cpu: float = 0.0
    steal: float | None = None

    @property
    def ok(self) -> int:
        return len(self.latencies_ns)

    @property
    def rps(self) -> float:
        return self.ok / self.duration

    def percentile_ms(self, p: float) -> float:
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] / 1e6

    def per_request_us(self, seconds: float | None) -> float | None:
        total = self.ok + self.errors
        return None if seconds is None or total == 0 else seconds / total * 1e6


def request_headers(protocol: str, tenant_id: str | None, api_key: str | None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": LEGACY_VERSION if protocol == "legacy" else MODERN_VERSION,
    }
    if protocol == "modern":
        headers["Mcp-Method"] = "tools/call"
    if tenant_id is not None:
        headers["Tenant-ID"] = tenant_id
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def call_body(protocol: str, request_id: int, tool: str, arguments: dict[str, Any]) -> bytes:
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if protocol == "modern":
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "tenantry-bench", "version": "0"},
        }
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}, separators=(",", ":")
    ).encode()


def check_response(status: int, payload: bytes, request_id: int) -> str | None:
    """None if this is the successful data_get result for `request_id`, else what is wrong with it."""
    if status != 200:
        return f"HTTP {status}: {payload[:200]!r}"
    try:
        message = json.loads(payload)
        result = message["result"]
    except (ValueError, KeyError, TypeError):
        return f"not a JSON-RPC result: {payload[:200]!r}"
    if message.get("id") != request_id:
        return f"answer for id {message.get('id')!r}, expected {request_id}"
    if result.get("isError"):
        return f"tool error: {json.dumps(result)[:200]}"
    structured = result.get("structuredContent") or {}
    if structured.get("value") != VALUE or structured.get("key") != KEY:
        return f"unexpected result: {json.dumps(result)[:200]}"
    return None


async def timed_call(
    conn: RawHttpConnection | HttpxConnection,
    body: bytes,
    request_id: int,
    result: RunResult,
    window_from: float,
    window_until: float,
    check: Callable[[int, bytes, int], str | None] | None = None,
) -> None:
    """One request: send, check the answer (with `check`, default `check_response`), and record it if it
    completed inside the window."""
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status, payload = await conn.post(body)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError, ValueError) as exc:
        problem: str | None = f"{type(exc).__name__}: {exc}"
        await conn.close()
    else:
        problem = (check or check_response)(status, payload, request_id)
    t1 = time.perf_counter()
    # A request counts in the window it completes in.
    if not window_from <= t1 <= window_until:
        return
    if problem is None:
        result.latencies_ns.append(round((t1 - t0) * 1e9))
    else:
        result.errors += 1
        if len(result.error_samples) < 3:
            result.error_samples.append(problem)


async def drive(
    target: Target, protocol: str, concurrency: int, warmup: float, duration: float, client_kind: str
) -> RunResult:
    """C workers, each on its own keep-alive connection, POSTing back to back for warmup + duration seconds."""
    headers = dict(target.headers)
    if protocol == "modern":
        headers["Mcp-Name"] = "data_get"
    result = RunResult(target.name, concurrency, duration)
    httpx_client = None
    if client_kind == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        httpx_client = httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT)
    url = f"http://127.0.0.1:{target.port}/mcp"
    connections: list[RawHttpConnection | HttpxConnection] = [
        HttpxConnection(httpx_client, url, headers)
        if httpx_client is not None
        else RawHttpConnection("127.0.0.1", target.port, "/mcp", headers)
        for _ in range(concurrency)
    ]
    # Build every body up front: the load generator shares 2 cores with the server.
    prefix, _, suffix = call_body(protocol, 0, "data_get", {"key": KEY}).partition(b'"id":0')
    perf = time.perf_counter
    measure_from = perf() + warmup
    measure_until = measure_from + duration
    snapshot: list[CpuSnapshot] = []

    async def worker(index: int, conn: RawHttpConnection | HttpxConnection) -> None:
        request_id = index * 10_000_000
        while perf() < measure_until:
            request_id += 1
            body = b'%s"id":%d%s' % (prefix, request_id, suffix)
            await timed_call(conn, body, request_id, result, measure_from, measure_until)

    async def snap_at(when: float) -> None:
        await asyncio.sleep(max(0.0, when - perf()))
        snapshot.append(CpuSnapshot.take(target.pid))

    try:
        await asyncio.gather(
            *(worker(i, c) for i, c in enumerate(connections)), snap_at(measure_from), snap_at(measure_until)
        )
    finally:
        for conn in connections:
            await conn.close()
        if httpx_client is not None:
            await httpx_client.aclose()
    result.server_cpu, result.postgres_cpu, result.client_cpu = snapshot[1].since(snapshot[0])
    result.steal = snapshot[1].steal_since(snapshot[0])
    return result


async def call_once(target: Target, protocol: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    headers = dict(target.headers)
    if protocol == "modern":
        headers["Mcp-Name"] = tool
    conn = RawHttpConnection("127.0.0.1", target.port, "/mcp", headers)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status, payload = await conn.post(call_body(protocol, 1, tool, arguments))
    finally:
        await conn.close()
    if status != 200:
        raise RuntimeError(f"{target.name} {tool}: HTTP {status}: {payload[:300]!r}")
    message: dict[str, Any] = json.loads(payload)
    if "result" not in message or message["result"].get("isError"):
        raise RuntimeError(f"{target.name} {tool} failed: {payload[:300]!r}")
    return message


# --- profiling -------------------------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(pid: int, out: Path, seconds: float) -> Iterator[None]:
    """Attach py-spy to `pid` for `seconds`, writing collapsed stacks to `out`.folded."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    # --nonblocking: py-spy's default (stopping the process per sample) lands samples on syscalls far more
    # often than they take time, e.g. asyncio.get_running_loop(), whose getpid() shows as 15% instead of ~2%.
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "250"]
    cmd += ["--nonblocking"]
    # Collapsed stacks: speedscope and flamegraph.pl open them, and bench/profile_summary.py ranks them.
    cmd += ["--format", "raw", "--output", str(out.with_suffix(".folded"))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# --- report ----------------------------------------------------------------------------------------


def fmt_us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_table(results: list[RunResult]) -> None:
    width = max(8, *(len(r.server) for r in results))
    print(
        f"{'server':<{width}} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
        f" {'srv µs/req':>10} {'pg µs/req':>9} {'cli µs/req':>10} {'steal':>5}"
    )
    for r in results:
        print(
            f"{r.server:<{width}} {r.concurrency:>4} {r.rps:>8.0f} {r.percentile_ms(50):>8.2f}"
            f" {r.percentile_ms(99):>8.2f} {r.errors:>6} {fmt_us(r.per_request_us(r.server_cpu)):>10}"
            f" {fmt_us(r.per_request_us(r.postgres_cpu)):>9} {fmt_us(r.per_request_us(r.client_cpu)):>10}"
            f" {'-' if r.steal is None else f'{100 * r.steal:.0f}%':>5}"
        )
    for r in results:
        for sample in r.error_samples:
            print(f"  {r.server} c={r.concurrency} error: {sample}")


def print_ratios(results: list[RunResult]) -> None:
    by = {(r.server, r.concurrency): r for r in results}
    print()
    print(f"{'conc':>4} {'gateway/bare req/s':>18} {'p50 gateway-bare ms':>20} {'srv CPU gateway/bare':>20}")
    for conc in sorted({r.concurrency for r in results}):
        g, b = by.get(("gateway", conc)), by.get(("bare", conc))
        if g is None or b is None:
            continue
        ratio = g.rps / b.rps if b.rps else float("nan")
        g_cpu, b_cpu = g.per_request_us(g.server_cpu), b.per_request_us(b.server_cpu)
        cpu_ratio = f"{g_cpu / b_cpu:.2f}x" if g_cpu and b_cpu else "-"
        print(f"{conc:>4} {ratio:>17.2f}x {g.percentile_ms(50) - b.percentile_ms(50):>+20.2f} {cpu_ratio:>20}")


def print_layer_costs(results: list[RunResult], variants: list[str]) -> None:
    """What each ablated layer costs per call: gateway minus variant (server CPU, and p50 latency)."""
    if not variants:
        return
    by = {(r.server, r.concurrency): r for r in results}
    print("\nlayer cost = gateway - variant (server CPU µs/call; p50 ms)")
    for conc in sorted({r.concurrency for r in results}):
        g = by.get(("gateway", conc))
        if g is None:
            continue
        g_cpu = g.per_request_us(g.server_cpu)
        cells = []
        for name in variants:
            v = by.get((name, conc))
            if v is None:
                continue
            v_cpu = v.per_request_us(v.server_cpu)
            cpu = f"{g_cpu - v_cpu:+.0f}" if g_cpu is not None and v_cpu is not None else "-"
            p50 = g.percentile_ms(50) - v.percentile_ms(50)
            ratio = f"{g.rps / v.rps - 1:+.0%}" if v.rps else "-"
            cells.append(f"{name} {cpu} µs / {p50:+.2f} ms / req/s {ratio}")
        print(f"  c={conc}: " + ", ".join(cells))


def print_paired(runs: list[RunResult], variants: list[str]) -> None:
    """Per round, the gateway against each variant driven just before or after it: the median of
    those paired differences moves much less with this VM's background load than a difference of
    medians does."""
    series: dict[tuple[str, int], list[RunResult]] = {}
    for r in runs:
        series.setdefault((r.server, r.concurrency), []).append(r)
    rounds = len(series.get(("gateway", runs[0].concurrency), [])) if runs else 0
    if not variants or rounds < 2:
        return
    print(f"\npaired by round (median of {rounds}; range) = gateway vs variant")
    for conc in sorted({r.concurrency for r in runs}):
        gateway = series.get(("gateway", conc), [])
        for name in variants:
            pairs = list(zip(gateway, series.get((name, conc), []), strict=False))
            if not pairs or not any(v.rps for _, v in pairs):
                continue
            ratio = sorted(g.rps / v.rps - 1 for g, v in pairs if v.rps)
            p50 = sorted(g.percentile_ms(50) - v.percentile_ms(50) for g, v in pairs)
            print(
                f"  c={conc} {name}: req/s {statistics.median(ratio):+.1%} ({ratio[0]:+.0%}..{ratio[-1]:+.0%}),"
                f" p50 {statistics.median(p50):+.2f} ms ({p50[0]:+.2f}..{p50[-1]:+.2f})"
            )


def median_runs(runs: list[RunResult]) -> list[RunResult]:
    """One result per (server, concurrency): the run with the median throughput, in first-seen order."""
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for r in runs:
        groups.setdefault((r.server, r.concurrency), []).append(r)
    picked = []
    for group in groups.values():
        ordered = sorted(group, key=lambda r: r.rps)
        picked.append(ordered[(len(ordered) - 1) // 2])
    return picked


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--concurrency", default="1,16", help="comma-separated worker counts (default 1,16)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run (default 1)")
    p.add_argument(
        "--protocol",
        choices=["legacy", "modern"],
        default="legacy",
        help="legacy = MCP-Protocol-Version 2025-11-25 (default); modern = 2026-07-28",
    )
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator HTTP client")
    p.add_argument("--only", choices=["bare", "gateway"], help="drive only this server (and any --variants)")
    p.add_argument(
        "--variants",
        default="",
        help="comma-separated gateway ablations from bench/gateway_variants.py to drive too, or 'all'",
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat every run this many times, report the median (default 1)"
    )
    p.add_argument("--profile", type=Path, metavar="DIR", help="also profile each server with py-spy into DIR")
    p.add_argument(
        "--redis-cluster",
        action="store_true",
        help="also drive gateway-rc, the gateway on a local three-master Redis Cluster started for the run",
    )
    p.add_argument("--database", default=DB_NAME, help=f"the bench database, recreated (default {DB_NAME})")
    args = p.parse_args(argv)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error("--concurrency must be comma-separated integers")
    if not args.concurrency or min(args.concurrency) < 1:
        p.error("--concurrency needs positive integers")
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1:
        p.error("--duration must be > 0, --warmup >= 0 and --rounds >= 1")
    from gateway_variants import VARIANTS

    args.variants = list(VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]
    if unknown := [v for v in args.variants if v not in VARIANTS]:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    return args


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    global DB_NAME
    args = parse_args(argv)
    DB_NAME = args.database
    print(
        f"cores: {os.cpu_count()}  python: {platform.python_version()} ({platform.python_implementation()})"
        f"  protocol: {args.protocol}  client: {args.client}"
        f"  duration: {args.duration:g}s (+{args.warmup:g}s warm-up)"
    )
    env = server_env()
    with asyncio.Runner(loop_factory=new_loop) as runner:
        tenant_id, api_key = runner.run(prepare_database(env))
        logdir = Path(tempfile.mkdtemp(prefix="tenantry-bench-"))
        servers: list[ServerProcess] = []
        cluster: LocalCluster | None = None
        failed = True
        try:
            servers.append(start_server("bare", ["bare_server:app", "--app-dir", str(BENCH)], env, logdir))
            servers.append(start_server("gateway", ["tenantry.app:create_app", "--factory"], env, logdir))
            if args.redis_cluster:
                from tenantry.dev.redis_cluster import start_local_cluster

                cluster = start_local_cluster(3)
                on_cluster = {**env, "TENANTRY_REDIS_URL": cluster.url, "TENANTRY_REDIS_CLUSTER": "true"}
                servers.append(start_server("gateway-rc", ["tenantry.app:create_app", "--factory"], on_cluster, logdir))
            for variant in args.variants:
                target = [f"gateway_variants:{variant}", "--factory", "--app-dir", str(BENCH)]
                servers.append(start_server(variant, target, env, logdir))
            for server in servers:
                wait_healthy(server)
            targets = {
                s.name: Target(
                    s.name,
                    s.port,
                    request_headers(args.protocol, None, None)
                    if s.name == "bare"
                    else request_headers(args.protocol, tenant_id, api_key),
                    s.pid,
                )
                for s in servers
            }
            for name, target in targets.items():
                if name != "bare":
                    runner.run(call_once(target, args.protocol, "data_put", {"key": KEY, "value": VALUE}))
            names = [args.only] if args.only else ["bare", "gateway"]
            names += ["gateway-rc"] if args.redis_cluster else []
            names += args.variants
            runs: list[RunResult] = []
            for _ in range(args.rounds):
                for conc in args.concurrency:
                    for name in names:
                        runs.append(
                            runner.run(
                                drive(targets[name], args.protocol, conc, args.warmup, args.duration, args.client)
                            )
                        )
            results = median_runs(runs)
            print()
            print_table(results)
            print_ratios(results)
            print_layer_costs(results, args.variants)
            print_paired(runs, args.variants)
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                conc = max(args.concurrency)
                for name in names:
                    with py_spy(targets[name].pid, args.profile / name, args.duration):
                        runner.run(drive(targets[name], args.protocol, conc, 0.5, args.duration, args.client))
                print(f"\nprofiles (c={conc}): {args.profile}/{{{','.join(names)}}}.folded")
            failed = any(r.errors for r in runs)
        finally:
            for server in servers:
                stop_server(server)
            if cluster is not None:
                cluster.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
