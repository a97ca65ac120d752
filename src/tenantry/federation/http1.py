"""A small HTTP/1.1 client for one upstream origin: keep-alive connections, strict framing, SSE.

Only what the upstream link (`federation/link.py`) needs, on bare asyncio streams: requests with a
fixed set of headers, responses framed by Content-Length, chunked encoding or the connection's
end (each checked strictly; a response that breaks the rules breaks the exchange, never the
process), size limits on heads, bodies and SSE events, and a list of idle connections reused one
exchange at a time. It connects to the addresses it is given (the ones the SSRF check vetted),
never resolving the name again; TLS verifies the certificate against the URL's host name.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

from tenantry.tls import DEFAULT_GROUPS, client_context

_MAX_HEAD: Final = 64 * 1024
_DIGITS: Final = re.compile(rb"[0-9]{1,18}")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,15}")


# Statuses whose responses never have a body, whatever their headers say (RFC 9112 6.3).
_NO_BODY: Final = frozenset({204, 304})


def _repeated(name: str, first: str, again: str) -> str:
    """A header field sent twice. Content-Length must agree with itself, or the response's end is
    ambiguous and the next response on the connection would be read out of step (response
    smuggling): refused, and the caller discards the connection. Others are joined as a list."""
    if name != "content-length":
        return f"{first}, {again}"
    if {v.strip() for v in f"{first},{again}".split(",")} != {first.strip()}:
        raise ProtocolError(f"conflicting Content-Length values {first[:20]!r} and {again[:20]!r}")
    return first


class HttpStatusError(Exception):
    """The upstream answered an HTTP error status (the link is suspect; 401/403: credentials refused)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
        self.status = status


class ProtocolError(Exception):
    """The upstream broke HTTP or MCP framing (the link is unusable)."""


class Connection:
    """One HTTP/1.1 connection, one exchange at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.reusable = True
        self.idle_since = 0.0

    def close(self) -> None:
        self.reusable = False
        self.writer.close()


class Response:
    def __init__(self, conn: Connection, status: int, headers: dict[str, str], limit: int) -> None:
        self.conn, self.status, self.headers, self._limit = conn, status, headers, limit
        if status in _NO_BODY:
            # No body, whatever the headers say (RFC 9112 6.3): nothing to read, the connection stays usable
            # unless the upstream said it closes it.
            self._chunked, self._length = False, 0
            self.complete = True
            self.released = False
            if headers.get("connection", "").lower() == "close":
                conn.reusable = False
            return
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
                    yield decode_json(payload)
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
        yield decode_json(payload)


def decode_json(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"the upstream sent a message that is not JSON: {payload[:100]!r}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("the upstream sent a JSON-RPC batch or a non-object message")
    return message


class Http1Client:
    """Keep-alive HTTP/1.1 to one origin (`url`'s scheme, host and port) with fixed headers."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        addresses: Sequence[str],
        connect_timeout: float,
        max_response_bytes: int,
        max_idle: int = 16,
        tls_groups: str = DEFAULT_GROUPS,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = client_context(tls_groups) if parts.scheme == "https" else None
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._addresses = list(addresses) or [self.host]
        host_header = parts.netloc.rsplit("@", 1)[-1]
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host_header, **headers}.items())
        self.connect_timeout = connect_timeout
        self.limit = max_response_bytes
        self._max_idle = max_idle
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()  # connections with an exchange on them
        self.closed = False

    async def send(
        self,
        verb: str,
        body: bytes | None,
        extra: str = "",
        *,
        accept: str = "application/json, text/event-stream",
        fresh: bool = False,
        retry: bool = True,
        max_idle_s: float | None = None,
        target: str | None = None,
    ) -> tuple[Response, Connection]:
        """Send one request (`extra`: more header lines, CRLF-terminated) and read its head.

        `retry`: the request is safe to send twice, so a reused connection the upstream had
        closed is retried once on a fresh one. `max_idle_s`: reuse only connections idle for
        less than this. `fresh`: a new connection (a long-lived stream), not from the idle list.
        `target`: another path (and query) on the same origin than the URL's, already percent-encoded."""
        lines = [f"{verb} {target or self._target} HTTP/1.1\r\n", self._fixed, f"Accept: {accept}\r\n", extra]
        if body is not None:
            lines.append(f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
        head = ("".join(lines) + "\r\n").encode("latin-1")
        for attempt in range(2):
            conn = None if fresh else self._take(max_idle_s=max_idle_s)
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            self._busy.add(conn)
            try:
                conn.writer.write(head + body if body else head)
                response = await self._read_head(conn)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.discard(conn)
                # An idle keep-alive connection the upstream had closed: nothing was processed; retry once.
                nothing = not (isinstance(exc, asyncio.IncompleteReadError) and exc.partial)
                if retry and reused and attempt == 0 and nothing:
                    continue
                raise
            except BaseException:
                self.discard(conn)
                raise
            return response, conn
        raise AssertionError("unreachable")

    def discard(self, conn: Connection) -> None:
        conn.close()
        self._busy.discard(conn)

    def release(self, conn: Connection, response: Response) -> None:
        """Back to the idle list when the exchange ended cleanly; closed otherwise."""
        if response.released:
            return
        response.released = True
        self._busy.discard(conn)
        if conn.reusable and response.complete and not self.closed and len(self._idle) < self._max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close every connection, idle or in use."""
        self.closed = True
        for conn in (*self._idle, *self._busy):
            conn.close()
        self._idle.clear()
        self._busy.clear()

    async def _read_head(self, conn: Connection) -> Response:
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
                name, value = name.strip().lower(), value.strip()
                if name in headers:
                    value = _repeated(name, headers[name], value)
                headers[name] = value
            return Response(conn, status, headers, self.limit)

    async def _connect(self) -> Connection:
        failure: Exception | None = None
        for address in self._addresses:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    reader, writer = await asyncio.open_connection(
                        address,
                        self._port,
                        ssl=self._tls,
                        server_hostname=self.host if self._tls is not None else None,
                        limit=_MAX_HEAD,
                    )
            except (OSError, TimeoutError) as exc:
                failure = exc
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return Connection(reader, writer)
        if isinstance(failure, TimeoutError):
            raise TimeoutError(f"connecting to {self.host}:{self._port} timed out")
        raise failure or OSError(f"no address to connect to for {self.host}")

    def _take(self, *, max_idle_s: float | None) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            fresh = max_idle_s is None or now - conn.idle_since < max_idle_s
            if fresh and not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        return None
