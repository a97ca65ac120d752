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
import re
import socket
import ssl
import time
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


_DIGITS: Final = re.compile(rb"[0-9]{1,18}")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,15}")
_SESSION_ID: Final = re.compile(r"[\x21-\x7e]{1,256}")
# A tools/call is not retried on a fresh connection (the upstream may have run it), so it only
# reuses a connection idle for less than this: below common keep-alive timeouts (uvicorn: 5 s).
_FRESH_ENOUGH_S: Final = 2.0
# Server-initiated requests the link answers at once (pings on the standalone stream, or requests
# relayed to agents); past this, more are dropped, so an upstream cannot pile up tasks and sockets.
_MAX_ANSWERING: Final = 16


class _Connection:
    """One HTTP/1.1 connection, one exchange at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.reusable = True
        self.idle_since = 0.0

    def close(self) -> None:
        self.reusable = False
        self.writer.close()


class _Response:
    def __init__(self, conn: _Connection, status: int, headers: dict[str, str], limit: int) -> None:
        self.conn, self.status, self.headers, self._limit = conn, status, headers, limit
        length = headers.get("content-length")
        self._chunked = "transfer-encoding" in headers
        if self._chunked and headers["transfer-encoding"].lower() != "chunked":
            raise ProtocolError(f"unsupported transfer coding {headers['transfer-encoding'][:40]!r}")
        if self._chunked and length is not None:
            raise ProtocolError("the response has both Content-Length and Transfer-Encoding")
        if length is not None and not _DIGITS.fullmatch(length.encode("latin-1")):
            raise ProtocolError(f"invalid Content-Length {length[:40]!r}")
        self._length = int(length) if length is not None else -1
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
                size_line = (await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0].strip()
                if not _HEX.fullmatch(size_line):
                    raise ProtocolError(f"invalid chunk size {size_line[:40]!r}")
                size = int(size_line, 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                seen += size
                if seen > self._limit:
                    raise ProtocolError(f"answer exceeds the limit of {self._limit} bytes")
                data = await reader.readexactly(size)
                if await reader.readexactly(2) != b"\r\n":
                    raise ProtocolError("a chunk does not end with CRLF")
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


async def sse_messages(chunks: AsyncIterator[bytes], max_event: int = 1 << 24) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of an SSE body (`message` events with data; comments, other events and
    empty events such as a resumable stream's priming event are skipped). Linear in the body: each
    byte is scanned for a line end once, however the body is chunked."""
    buffer = bytearray()
    scanned = 0  # buffer[:scanned] holds no line end
    data: list[bytes] = []
    size = 0
    event = b"message"
    async for chunk in chunks:
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", max(start, scanned))) >= 0:
            line = bytes(buffer[start : end - 1 if end > start and buffer[end - 1] == 0x0D else end])
            start = end + 1
            if not line:
                payload = b"\n".join(data)
                if payload and event == b"message":
                    yield _decode(payload)
                data, size, event = [], 0, b"message"
            elif line.startswith(b"data:"):
                value = line[6:] if line.startswith(b"data: ") else line[5:]
                data.append(value)
                size += len(value)
            elif line.startswith(b"event:"):
                event = line[6:].strip() or b"message"
        del buffer[:start]
        scanned = len(buffer)
        if size + len(buffer) > max_event:
            raise ProtocolError(f"an event exceeds the limit of {max_event} bytes")
    payload = b"\n".join(data)
    if payload and event == b"message":
        yield _decode(payload)


def _decode(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError) as exc:
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


Session = tuple[str | None, str]  # (Mcp-Session-Id, MCP-Protocol-Version) as sent on one request


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
        self._busy: set[_Connection] = set()  # connections with an exchange on them
        self._ids = 0
        self._session: Session = (None, PROTOCOL_VERSION)
        self.server_info: dict[str, Any] = {}
        self._standalone: asyncio.Task[None] | None = None
        self._answers: set[asyncio.Task[None]] = set()
        self._handshake = asyncio.Lock()
        self._closed = False

    @property
    def session_id(self) -> str | None:
        return self._session[0]

    @property
    def protocol_version(self) -> str:
        return self._session[1]

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._handshake:
            await self._initialize()
        if self.session_id is not None:
            self._standalone = asyncio.create_task(self._listen(), name=f"upstream-listen-{self._host}")

    async def _initialize(self) -> None:
        """A new session; `self._session` changes only once it is complete (requests in the
        meantime wait for it, see `_current`)."""
        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": CLIENT_CAPABILITIES, "clientInfo": CLIENT_INFO}
        answer, headers = await self._exchange("initialize", params, None, (None, PROTOCOL_VERSION), renew=False)
        result = _result(answer)
        version = result.get("protocolVersion")
        if not isinstance(version, str) or not _SESSION_ID.fullmatch(version):
            raise ProtocolError("the upstream's initialize result names no valid protocol version")
        session_id = headers.get("mcp-session-id")
        if session_id is not None and not _SESSION_ID.fullmatch(session_id):
            raise ProtocolError("the upstream's session id is not visible ASCII")
        session = (session_id, version)
        await self._post_message({"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
        self.server_info = result.get("serverInfo") or {}
        self._session = session

    async def aclose(self) -> None:
        self._closed = True
        await self._cancel_all()
        if self.session_id is not None:
            conn: _Connection | None = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    response, conn = await self._send("DELETE", b"", self._session, closing=True)
                    await response.body()
            if conn is not None:
                conn.close()
        await self._cancel_all()  # anything a stream still in flight started meanwhile
        for conn in (*self._idle, *self._busy):
            conn.close()
        self._idle.clear()
        self._busy.clear()

    async def _cancel_all(self) -> None:
        tasks = [t for t in (self._standalone, *self._answers) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- requests --------------------------------------------------------------------------

    async def request(self, method: str, params: dict[str, Any] | None, relay: Relay | None = None) -> dict[str, Any]:
        """Send one JSON-RPC request and return its result (MCPError for a JSON-RPC error)."""
        session = await self._current()
        answer, _ = await self._exchange(method, params, relay, session, renew=session[0] is not None)
        return _result(answer)

    async def _current(self) -> Session:
        """The session to send on: after any renewal in progress has finished."""
        if self._handshake.locked():
            async with self._handshake:
                pass
        return self._session

    async def _exchange(
        self, method: str, params: dict[str, Any] | None, relay: Relay | None, session: Session, *, renew: bool
    ) -> tuple[dict[str, Any], dict[str, str]]:
        self._ids += 1
        request_id = self._ids
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        # Retried on a fresh connection only what is safe to send twice: a call the upstream may
        # have run before the connection dropped is not.
        response, conn = await self._send("POST", body, session, retry=method != "tools/call")
        try:
            if response.status == 404 and session[0] is not None and renew:
                await response.body()
                self._release(conn, response)
                await self._renew(session)
                return await self._exchange(method, params, relay, await self._current(), renew=False)
            if response.status >= 400:
                raise HttpStatusError(response.status, await response.body())
            if response.content_type == "text/event-stream":
                answer = await self._stream(response, request_id, relay)
            else:
                answer = _decode(await response.body())
        finally:
            self._release(conn, response)
        if answer.get("id") != request_id:
            raise ProtocolError(f"the upstream answered request {request_id} with id {answer.get('id')!r}")
        return answer, response.headers

    async def _renew(self, expired: Session) -> None:
        async with self._handshake:
            if self._session == expired:  # else another request already renewed it
                log.info("upstream %s dropped session; starting a new one", self._host)
                await self._initialize()

    async def _stream(self, response: _Response, request_id: int, relay: Relay | None) -> dict[str, Any]:
        messages = sse_messages(response.chunks(), self._limit)
        mine: set[asyncio.Task[None]] = set()
        try:
            async for message in messages:
                if "method" not in message:
                    if message.get("id") == request_id:
                        break
                    continue
                if "id" in message:
                    task = self._answer_later(message, relay)
                    if task is not None:
                        mine.add(task)
                else:
                    await self._notified(message, relay)
            else:
                raise ProtocolError("the upstream closed the stream before answering")
        finally:
            # What the upstream asked during this call is moot once the call is over.
            for task in mine:
                task.cancel()
        if not response.complete:
            # The upstream should end the stream now; finish reading it off the call's path.
            response.released = True
            task = asyncio.create_task(self._finish(messages, response))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)
        return message

    async def _finish(self, messages: AsyncIterator[dict[str, Any]], response: _Response) -> None:
        try:
            async with asyncio.timeout(1.0):
                async for _ in messages:
                    pass
        except (TimeoutError, ProtocolError, OSError, asyncio.IncompleteReadError):
            response.conn.reusable = False
        finally:  # cancelled (the link closing) included: the connection is released or closed
            response.released = False
            self._release(response.conn, response)

    async def _notified(self, message: dict[str, Any], relay: Relay | None) -> None:
        if message.get("method") == "notifications/tools/list_changed":
            self._on_notification(message)
        elif relay is not None:
            params = message.get("params")
            try:
                await relay.notify(str(message["method"]), params if isinstance(params, dict) else None)
            except Exception as exc:  # an agent that went away must not break the tenant's upstream link
                log.debug("relaying %s from upstream %s failed: %s", message.get("method"), self._host, exc)

    def _answer_later(self, message: dict[str, Any], relay: Relay | None) -> asyncio.Task[None] | None:
        if self._closed or len(self._answers) >= _MAX_ANSWERING:
            log.warning("upstream %s sent more requests than the gateway answers at once; dropped", self._host)
            return None
        task = asyncio.create_task(self._answer(message, relay))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)
        return task

    async def _answer(self, message: dict[str, Any], relay: Relay | None) -> None:
        method, params = str(message.get("method")), message.get("params")
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message.get("id")}
        try:
            if method == "ping":
                reply["result"] = {}
            elif relay is None:
                raise MCPError(types.METHOD_NOT_FOUND, f"{method[:100]} cannot reach an agent on this path")
            else:
                reply["result"] = await relay.request(method, params if isinstance(params, dict) else None)
        except MCPError as exc:
            reply["error"] = exc.error.model_dump(mode="json", exclude_none=True)
        except Exception as exc:  # the upstream waits on an answer: give it one
            log.warning("relaying %s from upstream %s failed: %s", method[:100], self._host, type(exc).__name__)
            reply["error"] = {"code": types.INTERNAL_ERROR, "message": f"the gateway could not relay {method[:100]}"}
        try:
            async with asyncio.timeout(self._connect_timeout * 2):
                await self._post_message(reply, self._session)
        except Exception as exc:
            log.warning("answering %s to upstream %s failed: %s", method[:100], self._host, exc)

    async def _post_message(self, message: dict[str, Any], session: Session) -> None:
        """POST a notification or a response (the upstream acknowledges it with 202)."""
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        response, conn = await self._send("POST", body, session, retry=True)
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
                response, conn = await self._send("GET", None, self._session, accept="text/event-stream", fresh=True)
                if response.status >= 400:
                    await response.body()
                    if response.status == 405:
                        return  # the upstream offers no standalone stream
                else:
                    backoff = 1.0
                    async for message in sse_messages(response.chunks(), self._limit):
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
                    self._busy.discard(conn)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    # -- HTTP ------------------------------------------------------------------------------

    async def _send(
        self,
        verb: str,
        body: bytes | None,
        session: Session,
        *,
        accept: str = "application/json, text/event-stream",
        fresh: bool = False,
        retry: bool = True,
        closing: bool = False,
    ) -> tuple[_Response, _Connection]:
        if self._closed and not closing:
            raise ProtocolError("the upstream link is closed")
        lines = [f"{verb} {self._target} HTTP/1.1\r\n", self._fixed, f"Accept: {accept}\r\n"]
        session_id, version = session
        if session_id is not None:
            lines.append(f"Mcp-Session-Id: {session_id}\r\nMCP-Protocol-Version: {version}\r\n")
        if body is not None:
            lines.append(f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
        head = ("".join(lines) + "\r\n").encode("latin-1")
        for attempt in range(2):
            conn = None if fresh else self._take(max_idle_s=None if retry else _FRESH_ENOUGH_S)
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            self._busy.add(conn)
            try:
                conn.writer.write(head + body if body else head)
                response = await self._read_head(conn)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                conn.close()
                self._busy.discard(conn)
                # An idle keep-alive connection the upstream had closed: nothing was processed; retry once.
                nothing = not (isinstance(exc, asyncio.IncompleteReadError) and exc.partial)
                if retry and reused and attempt == 0 and nothing:
                    continue
                raise
            except BaseException:
                conn.close()
                self._busy.discard(conn)
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
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _DIGITS.fullmatch(parts[1].encode()):
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

    def _take(self, *, max_idle_s: float | None) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            fresh = max_idle_s is None or now - conn.idle_since < max_idle_s
            if fresh and not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection, response: _Response) -> None:
        """Back to the idle list when the exchange ended cleanly; closed otherwise."""
        if response.released:
            return
        response.released = True
        self._busy.discard(conn)
        if conn.reusable and response.complete and not self._closed and len(self._idle) < self._max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()


def _result(answer: dict[str, Any]) -> dict[str, Any]:
    if "error" in answer:
        raise _error(answer)
    result = answer.get("result")
    if not isinstance(result, dict):
        raise ProtocolError("the upstream's answer has no result object")
    return result
