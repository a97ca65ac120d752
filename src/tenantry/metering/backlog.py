"""What the meter owes Redis once it answers again, and the settling of it.

Two debts, kept by the meter while Redis does not answer: admissions it gave up on (the script may still
have run: `abandon.lua` undoes each that did, by its mark) and the in-flight entries of calls that ended
meanwhile (their events went to PostgreSQL; the entry is removed). Settling runs before the meter's next
round trip. Concurrent callers share the work: each takes its item off first; it goes back if its
idempotent command may not have run, behind the others if only its cluster slot is out.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tenantry.metering.commands import RedisCommands
from tenantry.metering.resp import LuaScript
from tenantry.metering.slots import SlotLost, SlotUnavailable

# What "Redis is unreachable" looks like from redis-py (builtin TimeoutError is an OSError).
REDIS_DOWN: Final = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class Abandoned:
    quota_key: str
    inflight_key: str
    mark_key: str
    call_id: str
    cost: int
    mark_ms: int


async def settle(
    commands: RedisCommands,
    abandon_lua: LuaScript,
    unreleased: collections.deque[tuple[str, str]],
    abandoned: collections.deque[Abandoned],
    unanswered: Callable[[], None],
) -> int:
    """Free what `unreleased` holds, then undo what `abandoned` holds, while Redis answers; returns how
    many abandoned admissions had run and were undone. `unanswered` is told when Redis stops answering."""
    undone = 0
    for _ in range(len(unreleased)):
        if not unreleased:
            return undone
        key, call_id = unreleased.popleft()
        try:
            await commands.execute("ZREM", key, call_id)
        except BaseException as exc:
            if not _put_back(exc, unreleased, (key, call_id), unanswered):
                return undone
    for _ in range(len(abandoned)):
        if not abandoned:
            return undone
        item = abandoned.popleft()
        try:
            keys = [item.quota_key, item.inflight_key, item.mark_key]
            outcome = await commands.evalsha(abandon_lua, keys, [item.call_id, item.cost, item.mark_ms])
        except BaseException as exc:
            if not _put_back(exc, abandoned, item, unanswered):
                return undone
            continue
        if outcome == 1:
            undone += 1
    return undone


def _put_back(exc: BaseException, queue: collections.deque[Any], item: Any, unanswered: Callable[[], None]) -> bool:
    """`item` failed with `exc`: True to go on with the others (only its cluster slot is out)."""
    if isinstance(exc, SlotUnavailable | SlotLost):
        queue.append(item)
        return True
    queue.appendleft(item)
    if not isinstance(exc, REDIS_DOWN):
        raise exc
    unanswered()
    return False
