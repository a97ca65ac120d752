"""The upstream HTTP/1.1 client's framing against a raw server: bodiless statuses and ambiguous lengths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tenantry.federation.http1 import Http1Client, ProtocolError

BODY = b"{}"
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"n": "ok"}'


@asynccontextmanager
async def server(*answers: bytes) -> AsyncIterator[tuple[Http1Client, list[int]]]:
    """A server that answers the n-th request it reads (on any connection) with `answers[n]` and keeps
    the connection open; yields a client for it and the list of connections it accepted."""
    queue = list(answers)
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections) + 1)
        try:
            while queue:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                writer.write(queue.pop(0))
                await writer.drain()
            await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = Http1Client(
        f"http://127.0.0.1:{port}/mcp", {}, addresses=["127.0.0.1"], connect_timeout=2, max_response_bytes=1 << 20
    )
    try:
        yield client, connections
    finally:
        client.close()
        srv.close()


async def exchange(client: Http1Client) -> tuple[int, bytes]:
    async with asyncio.timeout(2):
        response, conn = await client.send("POST", BODY)
        body = await response.body()
        client.release(conn, response)
    return response.status, body


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_a_bodiless_status_without_content_length_ends_at_its_head_and_keeps_the_connection(
    status: bytes,
) -> None:
    async with server(b"HTTP/1.1 " + status + b"\r\n\r\n", OK) as (client, connections):
        first = await exchange(client)  # read until the peer closed, before: a 2 s timeout here
        second = await exchange(client)
    assert first == (int(status[:3]), b"")
    assert second == (200, b'{"n": "ok"}')
    assert connections == [1]  # the second request reused the first connection


async def test_conflicting_content_lengths_are_refused_and_the_connection_is_not_reused() -> None:
    # Read with the last length, the connection would be out of step: the "rest" would pass for the
    # start of the next response.
    smuggled = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n"
        b"{}HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    async with server(smuggled, OK) as (client, connections):
        with pytest.raises(ProtocolError, match="conflicting Content-Length"):
            await exchange(client)
        assert await exchange(client) == (200, b'{"n": "ok"}')
    assert connections == [1, 2]


async def test_a_repeated_content_length_that_agrees_is_accepted() -> None:
    same = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"
    async with server(same, OK) as (client, connections):
        assert await exchange(client) == (200, b"{}")
        assert await exchange(client) == (200, b'{"n": "ok"}')
    assert connections == [1]
