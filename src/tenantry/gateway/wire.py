"""A lean MCP client for streamable-HTTP upstreams: raw JSON-RPC over keep-alive HTTP/1.1.

Why not the SDK's `Client` over httpx2: on the forwarding hot path that pair
cost about 2 ms per call here (typed models built and re-dumped, an anyio
task group and memory streams per session, httpx2's request machinery),
which alone exceeded the gateway's budget for what forwarding may add. A
forwarded call needs little of it: one POST of a JSON-RPC request on a
pooled connection and one answer, which is JSON or an SSE stream.

What one `HttpLink` (one upstream session of one tenant) does:

- **Handshake once**: `initialize`, then `notifications/initialized`; the
  session id (`Mcp-Session-Id`) and negotiated protocol version ride on
  every later request. A 404 on a request that carried a session id means
  the upstream dropped the session: the link handshakes again and retries
  that request once, as the spec asks of clients.
- **Connections**: HTTP/1.1 keep-alive connections, reused one request at a
  time; a reused connection the upstream closed while idle is retried once
  on a fresh one when not a byte of answer came back. The link connects to
  the addresses the SSRF check vetted, not to what a second lookup returns,
  so a DNS answer that changes after the check cannot redirect it (TLS still
  verifies the certificate against the URL's host name).
- **Per-request streams**: what the upstream sends on a request's SSE stream
  belongs to that request, so the link hands it to that request's `Relay`:
  notifications (progress, log messages) and server-initiated requests
  (sampling, elicitation, roots), whose answers it posts back. Without a
  relay, server requests are answered with an error and notifications dropped.
- **The standalone stream** (GET), when the upstream offers one, delivers
  `notifications/tools/list_changed` to `on_notification`; it reconnects
  with backoff, and stops when the upstream says it has none (405).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import mcp_types as types
from mcp.shared.exceptions import MCPError

log = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = "2025-11-25"
CLIENT_INFO: Final = {"name": "tenantry-gateway", "version": "0.1.0"}
# What the gateway can relay to the agent behind a call; the relay refuses a request its agent cannot take.
CLIENT_CAPABILITIES: Final[dict[str, dict[str, Any]]] = {"sampling": {}, "elicitation": {}, "roots": {}}
_MAX_HEAD: Final = 64 * 1024


class HttpStatusError(Exception):
    """The upstream answered an HTTP error status (the link is suspect; 401/403: credentials refused)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
        self.status = status


class ProtocolError(Exception):
    """The upstream broke HTTP or MCP framing (the link is unusable)."""


class Relay(Protocol):
    """Where a request's upstream traffic goes: the agent that made the call."""

    @property
    def progress_token(self) -> str | int | None:
        """The agent's progress token for this call, or None when it asked for no progress."""
        ...

    async def notify(self, method: str, params: dict[str, Any] | None) -> None: ...

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        """The agent's result, or raise MCPError with the agent's (or the relay's own) error."""
        ...


class _Connection:
    """One HTTP/1.1 connection, one exchange at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.reusable = True

    def close(self) -> None:
        self.reusable = False
        self.writer.close()


class _Response:
    def __init__(self, conn: _Connection, status: int, headers: dict[str, str], limit: int) -> None:
        self.conn, self.status, self.headers, self._limit = conn, status, headers, limit
        length = headers.get("content-length")
        self._length = int(length) if length is not None and length.isdigit() else -1
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.complete = False
        self.released = False
        if headers.get("connection", "").lower() == "close" or (self._length < 0 and not self._chunked):
            conn.reusable = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    async def chunks(self) -> AsyncIterator[bytes]:
        reader, seen = self.conn.reader, 0
        if self._length >= 0:
            if self._length > self._limit:
                raise ProtocolError(f"answer of {self._length} bytes exceeds the limit of {self._limit}")
            if self._length:
                yield await reader.readexactly(self._length)
        elif self._chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                seen += size
                if seen > self._limit:
                    raise ProtocolError(f"answer exceeds the limit of {self._limit} bytes")
                data = await reader.readexactly(size)
                await reader.readexactly(2)
                yield data
        else:
            while data := await reader.read(65536):
                seen += len(data)
                if seen > self._limit:
                    raise ProtocolError(f"answer exceeds the limit of {self._limit} bytes")
                yield data
        self.complete = True

    async def body(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])


async def sse_messages(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of an SSE body (`message` events; comments and other events skipped)."""
    buffer = b""
    data: list[bytes] = []
    event = b"message"
    async for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if data and event == b"message":
                    yield _decode(b"\n".join(data))
                data, event = [], b"message"
            elif line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif line.startswith(b"event:"):
                event = line[6:].strip()
    if data and event == b"message":
        yield _decode(b"\n".join(data))


def _decode(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload)
    except ValueError as exc:
        raise ProtocolError(f"the upstream sent a message that is not JSON: {payload[:100]!r}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("the upstream sent a JSON-RPC batch or a non-object message")
    return message


def _error(message: dict[str, Any]) -> MCPError:
    error = message.get("error")
    if not isinstance(error, dict):
        return MCPError(types.INTERNAL_ERROR, "malformed error from the upstream")
    code = error.get("code")
    return MCPError(
        code if isinstance(code, int) else types.INTERNAL_ERROR, str(error.get("message", ""))[:500], error.get("data")
    )


class HttpLink:
    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        addresses: Sequence[str],
        connect_timeout: float,
        max_response_bytes: int,
        on_notification: Callable[[dict[str, Any]], None] = lambda message: None,
        max_idle: int = 16,
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._addresses = list(addresses) or [self._host]
        host_header = parts.netloc.rsplit("@", 1)[-1]
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host_header, **headers}.items())
        self._connect_timeout = connect_timeout
        self._limit = max_response_bytes
        self._on_notification = on_notification
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._ids = 0
        self.session_id: str | None = None
        self.protocol_version = PROTOCOL_VERSION
        self.server_info: dict[str, Any] = {}
        self._standalone: asyncio.Task[None] | None = None
        self._answers: set[asyncio.Task[None]] = set()
        self._handshake: asyncio.Lock = asyncio.Lock()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._initialize()
        if self.session_id is not None:
            self._standalone = asyncio.create_task(self._listen(), name=f"upstream-listen-{self._host}")

    async def _initialize(self) -> None:
        self.session_id = None
        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": CLIENT_CAPABILITIES, "clientInfo": CLIENT_INFO}
        result = await self._exchange("initialize", params, None, retry_session=False)
        version = result.get("protocolVersion")
        if not isinstance(version, str):
            raise ProtocolError("the upstream's initialize result names no protocol version")
        self.protocol_version = version
        self.server_info = result.get("serverInfo") or {}
        await self._post_message({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def aclose(self) -> None:
        self._closed = True
        tasks = [t for t in (self._standalone, *self._answers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session_id is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    response, conn = await self._send("DELETE", b"", accept="application/json, text/event-stream")
                    await response.body()
                    self._release(conn, response)
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    # -- requests --------------------------------------------------------------------------

    async def request(self, method: str, params: dict[str, Any] | None, relay: Relay | None = None) -> dict[str, Any]:
        """Send one JSON-RPC request and return its result (MCPError for a JSON-RPC error)."""
        return await self._exchange(method, params, relay, retry_session=self.session_id is not None)

    async def _exchange(
        self, method: str, params: dict[str, Any] | None, relay: Relay | None, *, retry_session: bool
    ) -> dict[str, Any]:
        self._ids += 1
        request_id = self._ids
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        sent_with = self.session_id
        response, conn = await self._send("POST", body)
        try:
            if response.status == 404 and sent_with is not None and retry_session:
                await response.body()
                self._release(conn, response)
                await self._renew(sent_with)
                return await self._exchange(method, params, relay, retry_session=False)
            if response.status >= 400:
                raise HttpStatusError(response.status, await response.body())
            if method == "initialize":
                self.session_id = response.headers.get("mcp-session-id")
            if response.content_type == "text/event-stream":
                answer = await self._stream(response, request_id, relay)
            else:
                answer = _decode(await response.body())
        finally:
            self._release(conn, response)
        if answer.get("id") != request_id:
            raise ProtocolError(f"the upstream answered request {request_id} with id {answer.get('id')!r}")
        if "error" in answer:
            raise _error(answer)
        result = answer.get("result")
        if not isinstance(result, dict):
            raise ProtocolError("the upstream's answer has no result object")
        return result

    async def _renew(self, expired: str) -> None:
        async with self._handshake:
            if self.session_id == expired:  # else another request already renewed it
                log.info("upstream %s dropped session; starting a new one", self._host)
                await self._initialize()

    async def _stream(self, response: _Response, request_id: int, relay: Relay | None) -> dict[str, Any]:
        messages = sse_messages(response.chunks())
        async for message in messages:
            if "method" not in message:
                if message.get("id") == request_id:
                    break
                continue
            if "id" in message:
                self._answer_later(message, relay)
            else:
                await self._notified(message, relay)
        else:
            raise ProtocolError("the upstream closed the stream before answering")
        # The answer ends the exchange; the upstream ends the stream next, and the connection is reused.
        try:
            async with asyncio.timeout(1.0):
                async for _ in messages:
                    pass
        except TimeoutError:
            response.conn.reusable = False
        return message

    async def _notified(self, message: dict[str, Any], relay: Relay | None) -> None:
        if message.get("method") == "notifications/tools/list_changed":
            self._on_notification(message)
        elif relay is not None:
            params = message.get("params")
            await relay.notify(str(message["method"]), params if isinstance(params, dict) else None)

    def _answer_later(self, message: dict[str, Any], relay: Relay | None) -> None:
        task = asyncio.create_task(self._answer(message, relay))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _answer(self, message: dict[str, Any], relay: Relay | None) -> None:
        method, params = str(message["method"]), message.get("params")
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        try:
            if method == "ping":
                reply["result"] = {}
            elif relay is None:
                raise MCPError(types.METHOD_NOT_FOUND, f"{method} cannot reach an agent on this path")
            else:
                reply["result"] = await relay.request(method, params if isinstance(params, dict) else None)
        except MCPError as exc:
            reply["error"] = exc.error.model_dump(mode="json", exclude_none=True)
        except Exception as exc:  # the upstream waits on an answer: give it one
            log.warning("relaying %s from upstream %s failed: %s", method, self._host, type(exc).__name__)
            reply["error"] = {"code": types.INTERNAL_ERROR, "message": f"the gateway could not relay {method}"}
        try:
            await self._post_message(reply)
        except (OSError, ProtocolError, HttpStatusError, asyncio.IncompleteReadError) as exc:
            log.warning("answering %s to upstream %s failed: %s", method, self._host, exc)

    async def _post_message(self, message: dict[str, Any]) -> None:
        """POST a notification or a response (the upstream acknowledges it with 202)."""
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        response, conn = await self._send("POST", body)
        try:
            content = await response.body()
            if response.status >= 400:
                raise HttpStatusError(response.status, content)
        finally:
            self._release(conn, response)

    # -- the standalone stream -------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = 1.0
        while not self._closed:
            conn: _Connection | None = None
            try:
                response, conn = await self._send("GET", None, accept="text/event-stream", fresh=True)
                if response.status in (404, 405) or response.status >= 400:
                    await response.body()
                    if response.status == 405:
                        return  # the upstream offers no standalone stream
                else:
                    backoff = 1.0
                    async for message in sse_messages(response.chunks()):
                        if "method" in message and "id" in message:
                            self._answer_later(message, None)
                        elif "method" in message:
                            await self._notified(message, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("standalone stream of upstream %s: %s", self._host, exc)
            finally:
                if conn is not None:
                    conn.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    # -- HTTP ------------------------------------------------------------------------------

    async def _send(
        self,
        verb: str,
        body: bytes | None,
        *,
        accept: str = "application/json, text/event-stream",
        fresh: bool = False,
    ) -> tuple[_Response, _Connection]:
        lines = [f"{verb} {self._target} HTTP/1.1\r\n", self._fixed, f"Accept: {accept}\r\n"]
        if self.session_id is not None:
            lines.append(f"Mcp-Session-Id: {self.session_id}\r\nMCP-Protocol-Version: {self.protocol_version}\r\n")
        if body is not None:
            lines.append(f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
        head = ("".join(lines) + "\r\n").encode("latin-1")
        for attempt in range(2):
            conn = None if fresh else self._take()
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                conn.writer.write(head + body if body else head)
                response = await self._read_head(conn)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                conn.close()
                # An idle keep-alive connection the upstream had closed: nothing was processed; retry once.
                if reused and attempt == 0 and not (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return response, conn
        raise AssertionError("unreachable")

    async def _read_head(self, conn: _Connection) -> _Response:
        while True:
            try:
                raw = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError as exc:
                raise ProtocolError("the upstream's response head is too large") from exc
            status_line, *header_lines = raw[:-4].decode("latin-1").split("\r\n")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"not an HTTP/1.1 response: {status_line[:80]!r}")
            status = int(parts[1])
            if 100 <= status < 200:
                continue  # an interim response; the real one follows
            headers: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            return _Response(conn, status, headers, self._limit)

    async def _connect(self) -> _Connection:
        failure: Exception | None = None
        for address in self._addresses:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    reader, writer = await asyncio.open_connection(
                        address,
                        self._port,
                        ssl=self._tls,
                        server_hostname=self._host if self._tls is not None else None,
                        limit=_MAX_HEAD,
                    )
            except (OSError, TimeoutError) as exc:
                failure = exc
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return _Connection(reader, writer)
        if isinstance(failure, TimeoutError):
            raise TimeoutError(f"connecting to {self._host}:{self._port} timed out")
        raise failure or OSError(f"no address to connect to for {self._host}")

    def _take(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection, response: _Response) -> None:
        """Back to the idle list when the exchange ended cleanly; closed otherwise."""
        if response.released:
            return
        response.released = True
        if conn.reusable and response.complete and not self._closed and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()
