"""The per-call Redis commands on a Redis Cluster: each command sent straight to the master of its slot.

`ClusterClient` is `RedisCommands` (`commands.py`) over one lean connection (`resp.py`) per master.
It keeps the cluster's slot map (`CLUSTER SLOTS`, read on first use from the node the URL names)
and sends each command to the master that serves its key's slot (`slots.py`), so the meter's
decision is still one EVALSHA in one round trip, to one node.

- Several commands in one call (`execute_many`: the ledger's XADD and the meter's ZREM, the
  drain's reads and acknowledgements) are grouped by node: one write per node, all nodes at once,
  so the wait is one round trip however many masters they reach.
- `MOVED` (the slot has a new master: resharding, failover) updates the map for that slot, re-reads
  the whole map in the background, and resends the command there; `ASK` (the slot is being
  migrated and the key has left) resends it once to the importing node after `ASKING`, without
  touching the map. A lost connection also re-reads the map in the background (a failover may
  follow).
- What the cluster cannot serve now (`CLUSTERDOWN`, a slot nobody serves, redirections without end)
  is raised as redis-py's `ConnectionError`: for the meter and the ledger it is "Redis is
  unavailable", which the plan's outage policy and the PostgreSQL fallback already handle.
- `TRYAGAIN`: a script or multi-key command whose slot is mid-migration, its keys split between two
  masters (the meter's script always names keys that do not exist yet, so it gets this for as long
  as its tenant's slot moves). Retried a few times, 10 ms apart, then raised as `SlotUnavailable`, a
  `ConnectionError` the meter takes as "this tenant's keys are unavailable": the plan's outage
  policy decides that tenant's calls, and the meter does not stop asking Redis for everyone else.
  A master that refuses connections (down, before a replica takes over) is `SlotUnavailable` too:
  nothing was sent. A master that hangs is a timeout, as on a single Redis (the meter's breaker).

Every script and multi-key command of Tenantry touches keys of one slot (a tenant's keys carry
`{<tenant uuid>}`, each ledger stream a tag of its own; tests/metering/test_cluster.py checks it), so
no command ever needs keys from two nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Final, NoReturn

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tenantry.metering.resp import Arg, CannotConnect, Command, LuaScript, RespClient
from tenantry.metering.slots import SLOTS, SlotLost, SlotUnavailable, command_key, key_slot

__all__ = ["ClusterClient"]

log = logging.getLogger(__name__)

_MAX_REDIRECTS: Final = 5
_TRYAGAIN_PAUSE_S: Final = 0.01  # a multi-key command during a slot's migration: the keys are moving
_REFRESH_GAP_S: Final = 0.1

Address = tuple[str, int]


def _redirect(exc: Exception) -> tuple[str, int, Address] | None:
    """("MOVED" | "ASK", slot, node address) of a redirection error, else None."""
    if not isinstance(exc, ResponseError):
        return None
    parts = str(exc).split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    return parts[0], int(parts[1]), (host, int(port))


def _gave_up(last: ResponseError | None, command: Command) -> RedisConnectionError:
    if last is not None and str(last).startswith("TRYAGAIN"):
        return SlotUnavailable(f"{command[0]!s}: its slot is being migrated between masters ({last})")
    return RedisConnectionError(f"the Redis Cluster redirected {command[0]!s} more than {_MAX_REDIRECTS} times")


def _unavailable(exc: Exception) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith(("CLUSTERDOWN", "TRYAGAIN"))


class ClusterClient:
    """`RedisCommands` over a Redis Cluster, one lean connection per master (make one per event loop)."""

    cluster: Final = True

    def __init__(self, seed: RespClient, address: Address) -> None:
        """`seed`: a client of one node of the cluster, at `address`; the other nodes get the same
        credentials and TLS."""
        self._seed = seed
        self._nodes: dict[Address, RespClient] = {address: seed}
        self._slots: list[RespClient | None] = [None] * SLOTS
        self._mapped = False
        self._refreshing: asyncio.Task[None] | None = None
        self._next_refresh = 0.0

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.5) -> ClusterClient:
        """The cluster one of whose nodes `url` names (any URL `RespClient.from_url` takes but unix://)."""
        seed = RespClient.from_url(url, timeout=timeout)
        host, port = seed.address
        return cls(seed, (host, port))

    # -- the slot map --------------------------------------------------------------------------

    def _node(self, address: Address) -> RespClient:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = self._seed.at(*address)
        return node

    async def refresh(self) -> None:
        """Read the slot map now (from the first node that answers)."""
        last: Exception | None = None
        for address, node in list(self._nodes.items()):
            try:
                reply = await node.execute("CLUSTER", "SLOTS")
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                last = exc
                continue
            slots: list[RespClient | None] = [None] * SLOTS
            for start, end, master, *_ in reply:
                host = master[0].decode() if master[0] else address[0]  # "" means the node we asked
                owner = self._node((host, int(master[1])))
                slots[int(start) : int(end) + 1] = [owner] * (int(end) - int(start) + 1)
            self._slots = slots
            self._mapped = True
            return
        raise RedisConnectionError(f"no node of the Redis Cluster answered CLUSTER SLOTS: {last}")

    def _refresh_soon(self) -> None:
        """Re-read the map in the background (after a redirection or a lost node): the command that
        noticed is not held up by it. At most one at a time and one per `_REFRESH_GAP_S`: while a master
        is down every call to it notices, and the map must not be asked for thousands of times a second."""
        loop = asyncio.get_running_loop()
        if (self._refreshing is not None and not self._refreshing.done()) or loop.time() < self._next_refresh:
            return
        self._next_refresh = loop.time() + _REFRESH_GAP_S
        self._refreshing = loop.create_task(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except (RedisConnectionError, ValueError, TypeError, IndexError) as exc:  # no node, or a reply not understood
            log.warning("redis cluster: slot map not refreshed: %s", exc)

    async def _route(self, key: Arg | None) -> RespClient:
        if not self._mapped:
            await self._first_map()
        return self._lookup(key)

    async def _first_map(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh())
        await asyncio.shield(self._refreshing)

    def _lookup(self, key: Arg | None) -> RespClient:
        if key is None:
            return self._seed
        node = self._slots[key_slot(key)]
        if node is None:
            self._refresh_soon()
            raise RedisConnectionError(f"no master of the Redis Cluster serves slot {key_slot(key)}")
        return node

    # -- commands ------------------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        """One command, sent to the master of its key's slot, following redirections."""
        return await self._run(args, await self._route(command_key(args)))

    async def _run(self, command: Command, node: RespClient, *, asking: bool = False) -> Any:
        last: ResponseError | None = None
        for _ in range(_MAX_REDIRECTS):
            try:
                if not asking:
                    return await node.execute(*command)
                _, reply = await node.execute_replies([("ASKING",), command])
                if isinstance(reply, Exception):
                    raise reply
                return reply
            except ResponseError as exc:
                last = exc
                node, asking = await self._follow(exc, node, asking)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self._raise_lost(exc)
        raise _gave_up(last, command)

    async def _follow(self, exc: ResponseError, node: RespClient, asking: bool) -> tuple[RespClient, bool]:
        """Where to resend a command `node` answered `exc` to, and whether after ASKING; raises what
        is neither a redirection nor TRYAGAIN."""
        redirect = _redirect(exc)
        if redirect is None:
            if str(exc).startswith("TRYAGAIN"):
                await asyncio.sleep(_TRYAGAIN_PAUSE_S)
                return node, asking  # the same node, the same way: the migration may be over
            if _unavailable(exc):
                self._refresh_soon()
                raise RedisConnectionError(f"the Redis Cluster cannot serve this now: {exc}") from exc
            raise exc
        kind, slot, address = redirect
        target = self._node(address)
        if kind == "ASK":
            return target, True
        self._slots[slot] = target
        self._refresh_soon()
        return target, False

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands, one write per node and every node at once; replies in order, the first
        error raised once all are in."""
        if not self._mapped:
            await self._first_map()
        nodes = [self._lookup(command_key(c)) for c in commands]
        first = nodes[0]
        if all(node is first for node in nodes):
            replies = await self._replies(first, commands)
        else:
            groups: dict[RespClient, list[int]] = {}
            for i, node in enumerate(nodes):
                groups.setdefault(node, []).append(i)
            # Every node's write is queued before any reply is awaited: one round trip, no task per node.
            sent = [(idx, node.submit([commands[i] for i in idx])) for node, idx in groups.items()]
            replies = [None] * len(commands)
            lost: Exception | None = None
            for idx, answer in sent:
                try:
                    got = await answer
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    lost = lost or self._lost(exc)
                    continue
                for i, reply in zip(idx, got, strict=True):
                    replies[i] = reply
            if lost is not None:
                raise lost
        for i, reply in enumerate(replies):
            if isinstance(reply, ResponseError) and (_redirect(reply) or _unavailable(reply)):
                try:
                    replies[i] = await self._run(commands[i], nodes[i])
                except ResponseError as exc:
                    replies[i] = exc
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _replies(self, node: RespClient, commands: Sequence[Command]) -> list[Any]:
        try:
            return await node.execute_replies(commands)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._raise_lost(exc)

    def _raise_lost(self, exc: Exception) -> NoReturn:
        lost = self._lost(exc)
        if lost is exc:
            raise exc
        raise lost from exc

    def _lost(self, exc: Exception) -> Exception:
        """What to raise for a node that did not answer: its slots may have a new master soon (a map
        re-read is started); one that refused the connection got nothing, which concerns its slots only."""
        self._refresh_soon()
        if isinstance(exc, CannotConnect):
            return SlotUnavailable(f"a master of the Redis Cluster is unreachable: {exc}")
        if isinstance(exc, RedisConnectionError):  # closed under us, not hung (a timeout stays a timeout)
            return SlotLost(f"a master of the Redis Cluster was lost: {exc}")
        return exc

    async def evalsha(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run `script` on the master of its keys' slot (loading it there when that node lacks it)."""
        node = await self._route(keys[0] if keys else None)
        last: ResponseError | None = None
        for _ in range(_MAX_REDIRECTS):
            try:
                return await node.evalsha(script, keys, args)
            except ResponseError as exc:
                last = exc
                node, asking = await self._follow(exc, node, False)
                if asking:  # one command after ASKING: the script's text, not its SHA
                    return await self._run(("EVAL", script.text, len(keys), *keys, *args), node, asking=True)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self._raise_lost(exc)
        raise _gave_up(last, ("EVALSHA",))

    async def aclose(self) -> None:
        """Close every node's connection."""
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisConnectionError, RedisTimeoutError):
                await self._refreshing
            self._refreshing = None
        for node in self._nodes.values():
            await node.aclose()
