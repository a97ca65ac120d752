"""Automatic triggers of a tenant's policy: an agent stuck in a loop, a subject probing for tools.

- `loop`: one session (or, without sessions, one subject) calling the same tool with the same
  arguments more than `count` times within `seconds`;
- `probing`: one subject making more than `count` calls the policy refuses within `seconds` (a call
  of an unknown tool counts too: to the caller it looks the same as a hidden one).

When one fires, it is recorded (`governance_triggers`) and its action taken: `flag` (recorded
only), `throttle` (that session or subject is refused with `throttled` for `seconds`), or `kill`
(a kill of that session, or of the subject when there is none: every replica stops it until an
admin lifts it). The call that fired a throttle or a kill is refused with it.

Counting is per replica and in memory (a few timestamps per caller and call): behind N replicas a
trigger fires at the latest after N times its count. A tenant without triggers pays nothing.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from sqlalchemy import insert, select

from tenantry.db.engine import CONTROL, Database
from tenantry.db.models import governance_triggers
from tenantry.errors import LimitExceeded, TenantryError
from tenantry.governance.kills import KillSwitch, create_kill
from tenantry.governance.policy import Policy, Trigger
from tenantry.tenancy import Principal

log = logging.getLogger(__name__)

_MAX_TRACKED: Final = 100_000


def _unit(principal: Principal) -> tuple[str, str]:
    """What a loop is counted for, and what a throttle or a kill stops: the session, or the subject."""
    return ("session", principal.session) if principal.session else ("subject", principal.subject)


class TriggerWatch:
    def __init__(self, db: Database, kills: KillSwitch, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._kills = kills
        self._clock = clock
        self._seen: collections.OrderedDict[tuple[Any, ...], collections.deque[float]] = collections.OrderedDict()
        self._throttled: dict[tuple[uuid.UUID, str, str], tuple[float, str]] = {}
        self.fired = 0

    @property
    def throttling(self) -> int:
        """How many sessions and subjects are held (or were, until their next call or the next throttle)."""
        return len(self._throttled)

    def throttled(self, principal: Principal) -> TenantryError | None:
        """The refusal of a session or subject a trigger throttled, while it lasts."""
        if not self._throttled:
            return None
        for scope, target in (_unit(principal), ("subject", principal.subject)):
            held = self._throttled.get((principal.tenant_id, scope, target))
            if held is not None:
                until, why = held
                left = until - self._clock()
                if left > 0:
                    detail = f"this {scope} is throttled for {left:.0f}s more: {why}"
                    return LimitExceeded(detail, code="throttled", extra={"retry_after_ms": int(left * 1000)})
                del self._throttled[(principal.tenant_id, scope, target)]
        return None

    async def call(
        self, principal: Principal, policy: Policy, tool: str, arguments: Mapping[str, Any]
    ) -> TenantryError | None:
        """Count a call about to run; the refusal when the loop trigger fires with throttle or kill."""
        trigger = policy.triggers.loop
        if trigger is None:
            return None
        digest = hashlib.blake2b(json.dumps(arguments, sort_keys=True, default=str).encode(), digest_size=16).digest()
        scope, target = _unit(principal)
        if not self._over(("loop", principal.tenant_id, scope, target, tool, digest), trigger):
            return None
        why = f"{tool} called with the same arguments more than {trigger.count} times in {trigger.seconds:g}s"
        return await self._fire(principal, "loop", trigger, tool, why)

    async def denied(self, principal: Principal, policy: Policy, tool: str) -> TenantryError | None:
        """Count a call the policy refused; the refusal when the probing trigger fires with throttle or kill."""
        trigger = policy.triggers.probing
        if trigger is None or not self._over(("probing", principal.tenant_id, principal.subject), trigger):
            return None
        why = f"more than {trigger.count} refused calls in {trigger.seconds:g}s"
        return await self._fire(principal, "probing", trigger, tool, why, unit=("subject", principal.subject))

    def _over(self, key: tuple[Any, ...], trigger: Trigger) -> bool:
        """Record one more event under `key`; True (and start counting afresh) past the trigger's count."""
        now = self._clock()
        times = self._seen.get(key)
        if times is None:
            times = self._seen[key] = collections.deque()
            if len(self._seen) > _MAX_TRACKED:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        horizon = now - trigger.seconds
        while times and times[0] <= horizon:
            times.popleft()
        times.append(now)
        if len(times) <= trigger.count:
            return False
        times.clear()
        return True

    async def _fire(
        self,
        principal: Principal,
        name: str,
        trigger: Trigger,
        tool: str,
        why: str,
        *,
        unit: tuple[str, str] | None = None,
    ) -> TenantryError | None:
        self.fired += 1
        scope, target = unit or _unit(principal)
        log.warning(
            "trigger %s fired for tenant %s %s %s: %s (%s)",
            name,
            principal.tenant_id,
            scope,
            target,
            why,
            trigger.action,
        )
        async with self._db.tenant(principal.tenant_id, plane=CONTROL) as conn:
            await conn.execute(
                insert(governance_triggers).values(
                    tenant_id=principal.tenant_id,
                    trigger=name,
                    action=trigger.action,
                    subject=principal.subject,
                    session=principal.session,
                    tool=tool[:200],
                    detail=why,
                )
            )
        if trigger.action == "flag":
            return None
        if trigger.action == "throttle":
            now = self._clock()
            # Throttles that ended are dropped here too, not only when their caller comes back (many never do).
            for ended in [key for key, (until, _) in self._throttled.items() if until <= now]:
                del self._throttled[ended]
            self._throttled[(principal.tenant_id, scope, target)] = (now + trigger.seconds, why)
            return self.throttled(principal)
        async with self._db.system() as conn:
            kill = await create_kill(conn, principal.tenant_id, scope, target, f"trigger {name}: {why}")
        await self._kills.reload()
        return kill.refusal()


async def recent_firings(db: Database, tenant_id: uuid.UUID, limit: int = 100) -> list[dict[str, Any]]:
    """The tenant's latest trigger firings, newest first (read under its RLS binding)."""
    t = governance_triggers
    query = (
        select(t.c.id, t.c.trigger, t.c.action, t.c.subject, t.c.session, t.c.tool, t.c.detail, t.c.fired_at)
        .where(t.c.tenant_id == tenant_id)
        .order_by(t.c.fired_at.desc())
        .limit(limit)
    )
    async with db.tenant(tenant_id, plane=CONTROL) as conn:
        rows = (await conn.execute(query)).all()
    return [{**row._asdict(), "id": str(row.id), "fired_at": row.fired_at.isoformat()} for row in rows]
