"""A lean asyncio RESP2 client for the few Redis commands on the hot path of every tool call.

Why not redis-py for these: measured in-process, redis-py spends ~250 µs of client CPU on one
EVALSHA (pool checkout, retry and timeout wrappers, command packing, response callbacks) while
Redis itself spends ~40 µs on the script. The meter's admit and the ledger's record are two such
commands per call, so the client's overhead was the largest single cost of metering. This module
does only what those commands need:

- one persistent connection (TCP_NODELAY), opened on first use and reopened after a loss;
- automatic pipelining: commands issued in the same event-loop iteration, by any number of
  coroutines, go out in one write; replies come back in order and are handed out FIFO;
- a small RESP2 encoder and parser (`resp_protocol.py`);
- a deadline per command (`timeout`): a reply overdue by that much means the connection is
  unhealthy, so it is dropped and every command still waiting on it fails with redis-py's
  `TimeoutError`; a lost connection fails them with redis-py's `ConnectionError`. Callers that
  already treat redis-py's errors as "Redis is down" need no other handling;
- EVALSHA with one SCRIPT LOAD and retry when the server answers NOSCRIPT;
- AUTH (password or username + password) and SELECT from a redis://, rediss:// or unix:// URL.

The meter, the ledger and the drain reach it through `commands.RedisCommands` (on a Redis Cluster, one
client per master, `cluster.py`); health checks and tests use redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from redis.exceptions import AuthenticationError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tenantry.metering.resp_protocol import Arg, Command, Incomplete, LuaScript, encode_command, parse_reply

__all__ = ["Arg", "CannotConnect", "Command", "LuaScript", "RespClient", "UnsupportedURL", "encode_command"]


class UnsupportedURL(ValueError):
    """The URL names a transport this client does not speak; use redis-py for it."""


class CannotConnect(RedisConnectionError):
    """No connection could be opened (refused, unreachable): the command was never sent."""


class _Waiter:
    """`count` replies owed to one caller, in order."""

    __slots__ = ("count", "deadline", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, deadline: float) -> None:
        self.future = future
        self.count = count
        self.deadline = deadline
        self.replies: list[Any] = []


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.failure: Exception | None = None  # set once the connection is unusable

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            self._buffer += data
            buf: bytes | bytearray = self._buffer
        else:
            buf = data
        pos = 0
        waiters = self._waiters
        try:
            while pos < len(buf):
                reply, pos_after = parse_reply(buf, pos)
                pos = pos_after
                if not waiters:
                    raise RedisConnectionError("protocol error: a reply nobody asked for")
                waiter = waiters[0]
                waiter.replies.append(reply)
                if len(waiter.replies) == waiter.count:
                    waiters.popleft()
                    if not waiter.future.done():  # the caller may have been cancelled
                        waiter.future.set_result(waiter.replies)
        except Incomplete:
            pass
        except (RedisConnectionError, ValueError) as exc:  # not RESP: nothing after it can be trusted
            self.fail(exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(f"protocol error: {exc}"))
            return
        if pos == len(buf):
            self._buffer.clear()
        elif buf is self._buffer:
            del self._buffer[:pos]
        else:
            self._buffer = bytearray(buf[pos:])

    def connection_lost(self, exc: Exception | None) -> None:
        reason = RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}")
        self.fail(reason)

    # -- sending -------------------------------------------------------------------------------

    def send(self, payload: bytes, count: int, deadline: float | None = None) -> asyncio.Future[list[Any]]:
        """Queue `payload` (holding `count` commands) for the next write; the future gets their replies.

        Past `deadline` (default: now + the timeout) without the last reply, the connection is dropped."""
        if self.failure is not None:
            raise type(self.failure)(*self.failure.args)
        future: asyncio.Future[list[Any]] = self.loop.create_future()
        waiter = _Waiter(future, count, self.loop.time() + self._timeout if deadline is None else deadline)
        self._waiters.append(waiter)
        self._out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self.loop.call_at(waiter.deadline, self._check_deadline)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is None or self.failure is not None or not self._out:
            return
        out = self._out
        self._out = []
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _check_deadline(self) -> None:
        """Replies come in order, so only the oldest waiter's deadline matters."""
        self._watchdog = None
        if not self._waiters:
            return
        head = self._waiters[0].deadline
        if head <= self.loop.time():
            self.fail(RedisTimeoutError(f"Redis did not answer within {self._timeout}s"))
        else:
            self._watchdog = self.loop.call_at(head, self._check_deadline)

    # -- failure and close ---------------------------------------------------------------------

    def fail(self, exc: Exception) -> None:
        """Make the connection unusable and fail every command still waiting on it with `exc`."""
        if self.failure is None:
            self.failure = exc
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._out = []
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            if not waiter.future.done():
                # One instance per caller: a shared one would collect every caller's traceback.
                waiter.future.set_exception(type(self.failure)(*self.failure.args))
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self.fail(RedisConnectionError("the client was closed"))


class RespClient:
    """One connection to one Redis, shared by every coroutine of one event loop (the first one
    that uses it: make one client per loop)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 0.5,
    ) -> None:
        """`timeout` bounds every command, connecting included; past it the command fails with
        redis-py's `TimeoutError` and the connection is dropped."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._host, self._port, self._path = host, port, path
        self._login = (username, password, db)
        self._ssl = ssl_context
        self._timeout = timeout
        self._handshake: list[Command] = []
        if password is not None:
            self._handshake.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._handshake.append(("SELECT", db))
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.5) -> RespClient:
        """redis://[[user]:password@]host[:port][/db], rediss://... (TLS, certificates verified
        unless `ssl_cert_reqs=none`; `ssl_ca_certs=PATH` for a private CA) and unix://path[?db=N]."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        db_text = query.get("db")
        if db_text is None and parts.scheme != "unix":
            db_text = parts.path.lstrip("/")
        try:
            db = int(db_text) if db_text else 0
        except ValueError:
            raise UnsupportedURL(f"not a database number: {db_text!r}") from None
        if parts.scheme == "unix":
            return cls(path=parts.path, username=username, password=password, db=db, timeout=timeout)
        if parts.scheme not in ("redis", "rediss"):
            raise UnsupportedURL(f"unsupported scheme {parts.scheme!r}")
        context = None
        if parts.scheme == "rediss":
            context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
            reqs = query.get("ssl_cert_reqs", "required").lower()
            if reqs == "none":
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif reqs != "required":
                raise UnsupportedURL(f"unsupported ssl_cert_reqs {reqs!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            username=username,
            password=password,
            db=db,
            ssl_context=context,
            timeout=timeout,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The host and port this client connects to."""
        if self._path is not None:
            raise UnsupportedURL("a unix socket is not a Redis Cluster node")
        return self._host, self._port

    def at(self, host: str, port: int) -> RespClient:
        """A client of another node of the same deployment (a Redis Cluster's): same credentials and TLS."""
        username, password, db = self._login
        return RespClient(
            host=host,
            port=port,
            username=username,
            password=password,
            db=db,
            ssl_context=self._ssl,
            timeout=self._timeout,
        )

    # -- commands ------------------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        """One command; an error reply is raised (a `ResponseError`)."""
        replies = await self._send(encode_command(args), 1)
        reply = replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one write and one round trip (not a transaction); the replies in
        order. The first error reply is raised once all replies are in."""
        replies = await self._send(b"".join(encode_command(c) for c in commands), len(commands))
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def execute_replies(self, commands: Sequence[Command]) -> list[Any]:
        """As `execute_many`, but error replies are returned in place, not raised (a cluster client
        follows each command's redirection on its own)."""
        return await self._send(b"".join(encode_command(c) for c in commands), len(commands))

    def submit(self, commands: Sequence[Command]) -> Awaitable[list[Any]]:
        """As `execute_replies`, but queued at once when connected (a future, no coroutine to schedule): a
        cluster client sends one write to each of several nodes in the same loop iteration."""
        payload = b"".join(encode_command(c) for c in commands)
        conn = self._conn
        if conn is not None and conn.failure is None:
            return conn.send(payload, len(commands))
        return self._send(payload, len(commands))

    async def evalsha(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run `script` by its SHA; on NOSCRIPT (a restarted or flushed Redis) load it and retry, once,
        in the same round trip."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.execute(*command)
        except NoScriptError:
            loaded, reply = await self._send(
                encode_command(("SCRIPT", "LOAD", script.text)) + encode_command(command), 2
            )
        for value in (loaded, reply):
            if isinstance(value, Exception):
                raise value
        return reply

    async def _send(self, payload: bytes, count: int) -> list[Any]:
        conn = self._conn
        if conn is not None and conn.failure is None:
            return await conn.send(payload, count)
        # Connecting counts against the command's deadline: it completes or fails within `timeout`.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        conn = await self._connection(loop)
        if loop.time() >= deadline:
            raise RedisTimeoutError(f"Redis did not answer within {self._timeout}s")
        return await conn.send(payload, count, deadline)

    # -- connection ----------------------------------------------------------------------------

    async def _connection(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        if self._connecting is None:
            task = loop.create_task(self._connect(loop))
            task.add_done_callback(self._connected)
            self._connecting = task
        # Shielded: a caller that gives up (cancelled) does not cancel the connect the others await.
        return await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        # Retrieving the exception also spares asyncio's "exception was never retrieved" log when
        # every caller waiting on this attempt was cancelled.
        if not task.cancelled() and task.exception() is None:
            self._conn = task.result()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        def factory() -> _Connection:
            return _Connection(loop, self._timeout)

        try:
            async with asyncio.timeout(self._timeout):
                if self._path is not None:
                    _, conn = await loop.create_unix_connection(factory, self._path)
                else:
                    _, conn = await loop.create_connection(
                        factory,
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None,
                    )
        except TimeoutError:
            raise RedisTimeoutError(f"connecting to Redis took longer than {self._timeout}s") from None
        except OSError as exc:
            raise CannotConnect(f"cannot connect to Redis: {exc}") from exc
        if not self._handshake:
            return conn
        try:
            replies = await conn.send(b"".join(encode_command(c) for c in self._handshake), len(self._handshake))
        except BaseException:
            conn.close()
            raise
        for command, reply in zip(self._handshake, replies, strict=True):
            if isinstance(reply, Exception):
                conn.close()
                # As redis-py: a refused AUTH or SELECT is a connection that cannot be used.
                cls = AuthenticationError if command[0] == "AUTH" else RedisConnectionError
                raise cls(f"Redis refused {command[0]!s}: {reply}")
        return conn

    async def aclose(self) -> None:
        """Close the connection (commands still waiting fail with `ConnectionError`); a later
        command opens a new one."""
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisConnectionError, RedisTimeoutError):
                conn = await connecting
                conn.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            await asyncio.sleep(0)  # let the aborted transport run connection_lost and release its socket
