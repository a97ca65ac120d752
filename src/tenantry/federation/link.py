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
- **Connections** (`federation/http1.py`): keep-alive HTTP/1.1 to the addresses
  the SSRF check vetted, not to what a second lookup returns, so a DNS answer
  that changes after the check cannot redirect it. A request that is safe to
  repeat is retried once on a fresh connection when a reused one turns out
  closed; a `tools/call` never is (the upstream may have run it), and reuses
  only a connection idle for under 2 s, inside common keep-alive timeouts.
- **Per-request streams**: what the upstream sends on a request's SSE stream
  belongs to that request, so the link hands it to that request's `Relay`:
  notifications (progress, log messages) and server-initiated requests
  (sampling, elicitation, roots), whose answers it posts back. Without a
  relay, server requests are answered with an error and notifications dropped.
- **The standalone stream** (GET), when the upstream offers one, delivers
  what concerns the link rather than one call (`NOTICES`: list changes of
  tools, prompts and resources, and updates of subscribed resources) to
  `on_notification`, from whichever stream they come on; it reconnects
  with backoff, and stops when the upstream says it has none (405).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import mcp_types as types
from mcp.shared.exceptions import MCPError

from tenantry.federation.http1 import (
    Connection,
    Http1Client,
    HttpStatusError,
    ProtocolError,
    Response,
    decode_json,
    sse_messages,
)
from tenantry.tools.base import Relay

__all__ = ["HttpLink", "HttpStatusError", "ProtocolError", "sse_messages"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = "2025-11-25"
CLIENT_INFO: Final = {"name": "tenantry-gateway", "version": "0.1.0"}
# What the gateway can relay to the agent behind a call; the relay refuses a request its agent cannot take.
CLIENT_CAPABILITIES: Final[dict[str, dict[str, Any]]] = {"sampling": {}, "elicitation": {}, "roots": {}}


# What an upstream announces about itself (not about one call): handed to `on_notification`.
NOTICES: Final = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
    }
)

_SESSION_ID: Final = re.compile(r"[\x21-\x7e]{1,256}")
# A tools/call is not retried on a fresh connection (the upstream may have run it), so it only
# reuses a connection idle for less than this: below common keep-alive timeouts (uvicorn: 5 s).
_FRESH_ENOUGH_S: Final = 2.0
# Server-initiated requests the link answers at once (pings on the standalone stream, or requests
# relayed to agents); past this, more are dropped, so an upstream cannot pile up tasks and sockets.
_MAX_ANSWERING: Final = 16


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
    """One MCP session over `http` (the link owns it and closes it)."""

    def __init__(
        self,
        http: Http1Client,
        *,
        on_notification: Callable[[dict[str, Any]], None] = lambda message: None,
        trace_headers: Callable[[], str] = str,
    ) -> None:
        """`trace_headers`: header lines (CRLF-ended) carrying the caller's trace context (W3C
        `traceparent`) onto each request; "" when tracing is off."""
        self._http = http
        self._trace_headers = trace_headers
        self._host = http.host
        self._connect_timeout = http.connect_timeout
        self._limit = http.limit
        self._on_notification = on_notification
        self._ids = 0
        self._session: Session = (None, PROTOCOL_VERSION)
        self.server_info: dict[str, Any] = {}
        # What the upstream said it offers (`prompts`, `resources`, ...) in its initialize result.
        self.capabilities: dict[str, Any] = {}
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
        capabilities = result.get("capabilities")
        self.capabilities = capabilities if isinstance(capabilities, dict) else {}
        self._session = session

    async def aclose(self) -> None:
        self._closed = True
        await self._cancel_all()
        if self.session_id is not None:
            conn: Connection | None = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    response, conn = await self._send("DELETE", b"", self._session, closing=True)
                    await response.body()
            if conn is not None:
                conn.close()
        await self._cancel_all()  # anything a stream still in flight started meanwhile
        self._http.close()

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
                answer = decode_json(await response.body())
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

    async def _stream(self, response: Response, request_id: int, relay: Relay | None) -> dict[str, Any]:
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

    async def _finish(self, messages: AsyncIterator[dict[str, Any]], response: Response) -> None:
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
        if message.get("method") in NOTICES:
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
            conn: Connection | None = None
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
                    self._http.discard(conn)
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
    ) -> tuple[Response, Connection]:
        if self._closed and not closing:
            raise ProtocolError("the upstream link is closed")
        session_id, version = session
        extra = "" if session_id is None else f"Mcp-Session-Id: {session_id}\r\nMCP-Protocol-Version: {version}\r\n"
        extra += self._trace_headers()
        return await self._http.send(
            verb,
            body,
            extra,
            accept=accept,
            fresh=fresh,
            retry=retry,
            max_idle_s=None if retry else _FRESH_ENOUGH_S,
        )

    def _release(self, conn: Connection, response: Response) -> None:
        self._http.release(conn, response)


def _result(answer: dict[str, Any]) -> dict[str, Any]:
    if "error" in answer:
        raise _error(answer)
    result = answer.get("result")
    if not isinstance(result, dict):
        raise ProtocolError("the upstream's answer has no result object")
    return result
