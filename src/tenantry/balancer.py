"""A small round-robin TCP balancer, to run several gateway replicas on one machine (`tenantry balance`).

It ships with Tenantry so that trying replicas (`scripts/replicas.sh`, the compose `replicas` profile, the
tests and `bench/bench_replicas.py`) needs nothing installed; in production, use the balancer you have
(a cloud load balancer, a Kubernetes Service, HAProxy, nginx): the gateway needs nothing of it but TCP
round robin, because stateless requests go anywhere and a stateful session's request finds its replica
by itself (`gateway/replicas.py`).

Each client connection goes to the next backend in turn, and the bytes are copied both ways untouched
(TLS, HTTP/1.1 keep-alive and SSE streams pass through). A backend that refuses a connection is skipped
for `retry_after` seconds and the connection tried on the next one, so a replica that dies costs the
requests it was serving, not the ones after. It is not an HTTP proxy: one keep-alive connection stays on
one backend for its life.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_CHUNK = 65_536


@dataclass
class Backend:
    host: str
    port: int
    connections: int = 0  # connections sent here so far
    down_until: float = 0.0  # monotonic time before which it is skipped (it refused a connection)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (an IPv6 host in brackets) -> (host, port); ValueError when it is not one."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65_535:
        raise ValueError(f"not a host:port: {text!r}")
    return host.strip("[]"), int(port)


@dataclass
class Balancer:
    backends: list[Backend]
    retry_after: float = 2.0
    connect_timeout: float = 2.0
    _turn: itertools.count[int] = field(default_factory=itertools.count, init=False)
    _server: asyncio.Server | None = field(default=None, init=False)
    _open: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    @classmethod
    def to(cls, addresses: list[str], *, retry_after: float = 2.0, connect_timeout: float = 2.0) -> Balancer:
        return cls([Backend(*parse_address(a)) for a in addresses], retry_after, connect_timeout)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on (host, port) (0: any free port); return the address listened on."""
        if not self.backends:
            raise ValueError("a balancer needs at least one backend")
        self._server = await asyncio.start_server(self._accept, host, port, backlog=1024)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def aclose(self) -> None:
        """Stop listening and cut every connection still open."""
        if self._server is not None:
            self._server.close()
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _candidates(self) -> list[Backend]:
        """Every backend once, from the next in turn, those not known to be down first."""
        start = next(self._turn) % len(self.backends)
        ordered = self.backends[start:] + self.backends[:start]
        now = time.monotonic()
        return [b for b in ordered if b.down_until <= now] + [b for b in ordered if b.down_until > now]

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        try:
            await self._serve(client_reader, client_writer)
        finally:
            self._open.discard(task)
            client_writer.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        for backend in self._candidates():
            try:
                async with asyncio.timeout(self.connect_timeout):
                    reader, writer = await asyncio.open_connection(backend.host, backend.port)
            except (OSError, TimeoutError):
                backend.down_until = time.monotonic() + self.retry_after
                log.warning("backend %s refused a connection; skipped for %.1f s", backend.name, self.retry_after)
                continue
            backend.connections += 1
            backend.down_until = 0.0
            try:
                # Client -> backend ends with the client's half-close (passed on); backend -> client ends
                # the connection: a server that closed has nothing more to say on it.
                upstream = asyncio.create_task(_copy(client_reader, writer))
                await _copy(reader, client_writer)
                upstream.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upstream
            finally:
                writer.close()
            return
        log.error("no backend accepted a connection")


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:  # either side reset: the connection is over
        pass


async def run(listen: str, backends: list[str], *, retry_after: float = 2.0) -> None:
    """Balance `listen` (host:port) over `backends` until cancelled."""
    balancer = Balancer.to(backends, retry_after=retry_after)
    host, port = await balancer.start(*parse_address(listen))
    print(f"balancing {host}:{port} over {', '.join(b.name for b in balancer.backends)}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await balancer.aclose()
