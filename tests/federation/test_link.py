"""The lean upstream client against HTTP behaviour a well-behaved SDK server does not show.

The peer is a small raw HTTP/1.1 server on loopback speaking just enough MCP; each test
turns on one misbehaviour: closing idle keep-alive connections, forgetting sessions,
answering too much, answering on a chunked SSE stream with a request in the middle.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tenantry.federation.http1 import Http1Client
from tenantry.federation.link import HttpLink, HttpStatusError, ProtocolError, sse_messages


@dataclass
class Peer:
    close_after_each: bool = False
    forget_sessions: int = 0  # answer this many session-bearing POSTs with 404
    huge: bool = False
    sse: bool = False
    drop_calls: int = 0  # receive this many tools/call, then drop the connection without answering
    flood: int = 0  # on an SSE answer, first send this many pings the gateway must not all answer
    sessions: list[str] = field(default_factory=list)
    connections: int = 0
    call_connections: list[int] = field(default_factory=list)  # the connection each tools/call came on
    posted: list[dict[str, Any]] = field(default_factory=list)
    replies: dict[Any, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                verb = lines[0].split(" ")[0]
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                message = json.loads(body) if body else None
                if isinstance(message, dict) and message.get("method") == "tools/call":
                    self.call_connections.append(number)
                    if self.drop_calls:
                        self.drop_calls -= 1
                        writer.close()
                        return
                await self.answer(writer, verb, headers, message)
                if self.close_after_each:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()  # a connection still open when the test's loop ends is cancelled: fine here

    async def answer(
        self, writer: asyncio.StreamWriter, verb: str, headers: dict[str, str], message: dict[str, Any] | None
    ) -> None:
        if verb == "GET":
            return self.send(writer, 405, b"")
        if verb == "DELETE" or message is None:
            return self.send(writer, 200, b"")
        self.posted.append(message)
        session = headers.get("mcp-session-id")
        if session is not None and self.forget_sessions and message.get("method") == "tools/call":
            self.forget_sessions -= 1
            return self.send(writer, 404, b'{"error":"unknown session"}')
        if "method" not in message:  # the client's answer to our request
            if str(message["id"]).startswith("p"):
                await asyncio.Event().wait()  # never acknowledge a flood ping: the gateway's answers pile up
            else:
                self.replies.pop(message["id"]).set_result(message)
            return self.send(writer, 202, b"")
        if message["method"] == "initialize":
            new = f"s{len(self.sessions) + 1}"
            self.sessions.append(new)
            result = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "peer"}}
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": result}
            return self.send(writer, 200, json.dumps(reply).encode(), extra=f"Mcp-Session-Id: {new}\r\n")
        if "id" not in message:
            return self.send(writer, 202, b"")
        if message["method"] != "tools/call":
            error = {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "no such method"}}
            return self.send(writer, 200, json.dumps(error).encode())
        text = "x" * 5000 if self.huge else f"session {session}"
        reply = {"jsonrpc": "2.0", "id": message["id"], "result": {"content": [{"type": "text", "text": text}]}}
        if not self.sse:
            return self.send(writer, 200, json.dumps(reply).encode())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for n in range(self.flood):
            ping = b'data: {"jsonrpc":"2.0","id":"p%d","method":"ping"}\n\n' % n
            writer.write(b"%x\r\n%s\r\n" % (len(ping), ping))
        ask = {"jsonrpc": "2.0", "id": "q1", "method": "sampling/createMessage", "params": {"messages": []}}
        self.replies["q1"] = asyncio.get_running_loop().create_future()
        for event in (
            b": a comment\r\n\r\n",
            b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress",'
            b'"params":{"progressToken":"t","progress":1}}\r\n\r\n',
            b"data: " + json.dumps(ask).encode() + b"\n\n",
        ):
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        answer = await self.replies["q1"]
        said = answer["result"]["text"] if "result" in answer else f"error {answer['error']['code']}"
        reply["result"]["content"][0]["text"] = f"agent said {said}"
        # One event split across two chunks, then the end of the stream.
        event = b"data: " + json.dumps(reply).encode() + b"\n\n"
        for part in (event[:10], event[10:]):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        writer.write(b"0\r\n\r\n")
        return None

    @staticmethod
    def send(writer: asyncio.StreamWriter, status: int, body: bytes, extra: str = "") -> None:
        kind = "Content-Type: application/json\r\n" if body else ""
        writer.write(f"HTTP/1.1 {status} X\r\n{kind}{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)


@asynccontextmanager
async def linked(peer: Peer, **options: Any) -> AsyncIterator[HttpLink]:
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = HttpLink(
        Http1Client(
            f"http://localhost:{port}/mcp",
            {"Authorization": "Bearer t"},
            addresses=["127.0.0.1"],
            connect_timeout=2,
            max_response_bytes=options.get("max_response_bytes", 1 << 20),
        )
    )
    try:
        await link.start()
        yield link
    finally:
        await link.aclose()
        server.close()


class Recorder:
    progress_token = "t"

    def __init__(self) -> None:
        self.notes: list[tuple[str, Any]] = []

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        self.notes.append((method, params))

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        return {"role": "assistant", "text": "hello", "method": method}


async def call(link: HttpLink, relay: Recorder | None = None) -> str:
    result = await link.request("tools/call", {"name": "t", "arguments": {}}, relay)
    return str(result["content"][0]["text"])


async def test_keep_alive_connections_are_reused() -> None:
    peer = Peer()
    async with linked(peer) as link:
        for _ in range(5):
            assert await call(link) == "session s1"
    assert len(set(peer.call_connections)) == 1


async def test_a_connection_the_upstream_closed_while_idle_is_not_reused() -> None:
    peer = Peer(close_after_each=True)  # closes each connection after one answer, unannounced
    async with linked(peer) as link:
        for _ in range(2):
            await asyncio.sleep(0.05)  # the upstream's close reaches the gateway while the connection is idle
            assert await call(link) == "session s1"
        # A request that is safe to repeat is retried once when a reused connection turns out closed.
        with pytest.raises(MCPError):
            await link.request("no/such", None)
        with pytest.raises(MCPError):
            await link.request("no/such", None)
    assert len(peer.call_connections) == 2  # each call reached the upstream exactly once
    assert len(set(peer.call_connections)) == 2


async def test_a_call_the_upstream_received_is_never_sent_twice() -> None:
    peer = Peer()
    async with linked(peer) as link:
        assert await call(link) == "session s1"  # the connection is now idle and reusable
        peer.drop_calls = 1
        with pytest.raises(asyncio.IncompleteReadError):
            await call(link)
    # The upstream may have run the call before it dropped the connection: not re-sent.
    assert len(peer.call_connections) == 2


async def test_a_forgotten_session_is_renewed_and_the_request_sent_again_once() -> None:
    peer = Peer(forget_sessions=1)
    async with linked(peer) as link:
        assert await call(link) == "session s2"
        assert link.session_id == "s2"
    peer = Peer()
    async with linked(peer) as link:
        peer.forget_sessions = 10  # forgets every session, the new one too: the 404 surfaces
        with pytest.raises(HttpStatusError) as raised:
            await call(link)
        assert raised.value.status == 404
        assert peer.sessions == ["s1", "s2"]


async def test_calls_during_a_session_renewal_wait_for_it_and_use_the_new_session() -> None:
    peer = Peer()
    async with linked(peer) as link:
        peer.forget_sessions = 1
        results = await asyncio.gather(*(call(link) for _ in range(5)))
    # One call met the 404 and renewed; the others either went out before (and got their answer on
    # s1) or waited for the renewal and used s2; none was sent without a session or renewed again.
    assert set(results) <= {"session s1", "session s2"}
    assert "session s2" in results
    assert peer.sessions == ["s1", "s2"]


async def test_an_answer_over_the_size_limit_is_refused() -> None:
    async with linked(Peer(huge=True), max_response_bytes=4096) as link:
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            await call(link)


async def test_an_sse_answer_relays_notifications_and_server_requests_to_the_caller() -> None:
    relay = Recorder()
    peer = Peer(sse=True)
    async with linked(peer) as link:
        assert await call(link, relay) == "agent said hello"
        assert relay.notes == [("notifications/progress", {"progressToken": "t", "progress": 1})]
        # Without a relay the upstream's request is answered with an error, and the call still ends.
        peer.replies.clear()
        assert await call(link, None) == "agent said error -32601"
    answers = [m for m in peer.posted if "method" not in m]
    assert answers[0]["result"]["text"] == "hello"


async def test_requests_an_upstream_floods_a_call_with_are_bounded_and_end_with_it() -> None:
    peer = Peer(sse=True, flood=500)
    async with linked(peer) as link:
        # 500 pings, then the sampling request: the gateway answers 16 at a time and drops the rest
        # (the sampling request too, so the call runs into its timeout, as the pool enforces).
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):
                await call(link, Recorder())
        await asyncio.sleep(0)
        assert all(task.done() for task in link._answers)  # what the call started ended with it
        answered = [m for m in peer.posted if "method" not in m]
        assert 0 < len(answered) <= 16
    assert peer.connections < 40  # not one socket per request


async def test_a_json_rpc_error_is_an_mcp_error() -> None:
    async with linked(Peer()) as link:
        with pytest.raises(MCPError):
            await link.request("no/such", None)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def messages_of(*parts: bytes, limit: int = 1 << 20) -> list[dict[str, Any]]:
    return [m async for m in sse_messages(_chunks(*parts), limit)]


async def test_sse_parsing_follows_the_event_stream_rules() -> None:
    # A resumable stream's priming event (an id, empty data) is not a message; CRLF and bare LF both
    # end lines; "data:" with or without a space; an empty event name means "message"; other events skip.
    body = [
        b"id: 1\r\ndata: \r\n\r\n",
        b'event:\ndata:{"a":\n',
        b"data: 1}\n\n",
        b'event: ping\ndata: {"b": 2}\n\n',
        b": comment\n\n",
        b'data: {"c"',
        b": 3}\n\n",
    ]
    assert await messages_of(*body) == [{"a": 1}, {"c": 3}]
    # The same body one byte at a time parses the same.
    joined = b"".join(body)
    assert await messages_of(*(joined[i : i + 1] for i in range(len(joined)))) == [{"a": 1}, {"c": 3}]


async def test_an_sse_event_over_the_limit_or_not_json_is_refused() -> None:
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        await messages_of(*([b"data: " + b"x" * 1000] * 10), limit=4096)  # one line that never ends
    with pytest.raises(ProtocolError, match="not JSON"):
        await messages_of(b"data: {nope\n\n")
    with pytest.raises(ProtocolError, match="not JSON"):
        await messages_of(b"data: " + b"[" * 100_000 + b"\n\n")


async def start_against(answer: bytes) -> None:
    """Start a link against a server that answers the first request with `answer`, then hangs up."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = HttpLink(
        Http1Client(
            f"http://127.0.0.1:{port}/mcp", {}, addresses=["127.0.0.1"], connect_timeout=2, max_response_bytes=1 << 20
        )
    )
    try:
        await link.start()
    finally:
        await link.aclose()
        server.close()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
    ],
)
async def test_a_malformed_response_head_breaks_the_exchange_not_the_gateway(head: bytes) -> None:
    with pytest.raises(ProtocolError):
        await start_against(head)


@pytest.mark.parametrize("size", [b"-1", b"0x10", b"1_0", b"zz"])
async def test_a_malformed_chunk_size_is_refused(size: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    with pytest.raises(ProtocolError, match="chunk size"):
        await start_against(head + size + b"\r\n{}\r\n0\r\n\r\n")
