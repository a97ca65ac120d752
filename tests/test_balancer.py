"""`tenantry balance`: round robin per connection, a refusing backend skipped, bytes passed untouched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tenantry.balancer import Balancer, parse_address
from tenantry.cli import build_parser
from tests.conftest import free_port


async def _named_server(name: bytes) -> asyncio.Server:
    """A backend that answers each line with its name and the line, until the client half-closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(name + b":" + line)
            await writer.drain()
        writer.write(name + b":bye\n")  # the client's half-close reached us; our answer still reaches it
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.fixture
async def backends() -> AsyncIterator[list[asyncio.Server]]:
    servers = [await _named_server(name) for name in (b"a", b"b", b"c")]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


def _address(server: asyncio.Server) -> str:
    return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _exchange(port: int, line: bytes) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(line)
    await writer.drain()
    first = await reader.readline()
    writer.write_eof()
    rest = await reader.read()
    writer.close()
    return [first, rest]


async def test_each_connection_goes_to_the_next_backend_and_bytes_pass_both_ways(
    backends: list[asyncio.Server],
) -> None:
    balancer = Balancer.to([_address(s) for s in backends])
    _, port = await balancer.start()
    try:
        answers = [await _exchange(port, f"hello {n}\n".encode()) for n in range(6)]
    finally:
        await balancer.aclose()
    assert [a[0] for a in answers] == [f"{name}:hello {n}\n".encode() for n, name in enumerate("abcabc")]
    assert [a[1] for a in answers] == [f"{name}:bye\n".encode() for name in "abcabc"]  # the half-close passed
    assert [b.connections for b in balancer.backends] == [2, 2, 2]


async def test_a_backend_that_refuses_is_skipped_and_its_connection_served_by_the_next(
    backends: list[asyncio.Server],
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    balancer = Balancer.to([_address(backends[0]), dead, _address(backends[1])], retry_after=60)
    _, port = await balancer.start()
    try:
        answers = [(await _exchange(port, b"x\n"))[0] for _ in range(4)]
    finally:
        await balancer.aclose()
    assert sorted(answers) == [b"a:x\n", b"a:x\n", b"b:x\n", b"b:x\n"]  # no client saw the dead backend
    assert balancer.backends[1].connections == 0


def test_addresses_and_the_command_line_are_checked() -> None:
    assert parse_address("127.0.0.1:8001") == ("127.0.0.1", 8001)
    assert parse_address("[::1]:8001") == ("::1", 8001)
    for bad in ("127.0.0.1", ":80", "host:http", "host:70000"):
        with pytest.raises(ValueError, match="host:port"):
            parse_address(bad)
    args = build_parser().parse_args(["balance", "--listen", "127.0.0.1:9000", "--backend", "127.0.0.1:9001"])
    assert (args.listen, args.backend, args.retry_after) == ("127.0.0.1:9000", ["127.0.0.1:9001"], 2.0)
