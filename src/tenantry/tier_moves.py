"""Plan-driven tier moves: a tenant billed through Stripe ends up on the tier its plan asks for.

Why not in the webhook: a move copies the tenant's data (seconds, or minutes for a big tenant) and
Stripe wants a quick 2xx; a webhook that timed out would be redelivered into a move still running.

The intent is the tenant row itself, so nothing new has to be recorded: a tenant is *due* when it is
billed through Stripe (it has a subscription), active or suspended, no move is under way, and the tier
its override or its paid plan asks for (`WANTED`) is not where its data is. The webhook transaction
that changes the plan is therefore the durable mark, committed together with the event id that makes a
redelivery a no-op. Once the move has switched, the tenant is no longer due, so a replayed event, a
second replica or a restart finds nothing left to do: one move per change. A plan changed back before
its move ran leaves nothing due either. Tenants without a subscription are placed by whoever changes
them (`POST /api/tenants`, `tenantry tenant move`): an operator's placement is never second-guessed.

Which plan: the one paid for. A tenant restricted by dunning keeps the tier of the plan it pays for
(`plan_before_restriction`): an unpaid invoice does not copy its data away and back.

One replica at a time: every replica runs `TierMover.run` (a lifespan task; the webhook wakes it at
once), and each pass takes a PostgreSQL advisory lock, as the billing reporter does. `tiers.move_tenant`
holds the tenant's move lock and claims its row, so an admin's move and this one never overlap.

A move that died (its process killed mid-way) leaves its claim, and the tenant refused: each pass first
releases claims older than `STALE_AFTER` whose move lock is free (`tiers.release_stale_claim`), with or
without Stripe. Every move and release the mover makes is recorded in the tenant's trail (subject
`system:tier-mover`), as an admin's change is.

Failures: a failed move unwinds itself (the tenant stays where it was, serving). Its attempt count,
last error and next attempt (exponential backoff, 5 s doubling to 30 min) are kept in the tenant's
sealed placement dict (`placement_secret`, key `plan_move`: no migration needed, and the same row), so
every replica's `GET /api/tenants/{id}/tier` and `/health` show it and a restart keeps the backoff. The
move's switch rewrites that dict, which clears it.

The old copy a previous move left (what `move_tenant` refuses with `cleanup_pending`) is cleaned up
first only when that is safe (`tiers.old_copy_safety`): the old copy is still fenced, so no write has
reached it since the switch that verified every row of it into the current copy, and the current copy
answers, so the old one is not the last good copy. Otherwise the move is not tried; the reason is its
reported error, and an operator decides (`tenantry tenant cleanup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry import tiers
from tenantry.audit.changes import record_change
from tenantry.db.engine import Database
from tenantry.errors import Conflict, TenantryError
from tenantry.secrets import SecretBox
from tenantry.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
LOCK_KEY = 0x74696572_6D6F7665  # "tiermove"
BACKOFF_BASE = timedelta(seconds=5)
BACKOFF_MAX = timedelta(minutes=30)
STATE_KEY = "plan_move"
# The subject of the audit records of what the mover does.
MOVER = "system:tier-mover"

# Due tenants; `wanted`: the tenant's override, else the tier of the plan it pays for.
_DUE = text(
    """
    SELECT * FROM (
        SELECT id, placement, placement_secret, retired_placement,
               coalesce(tier, CAST(:plan_tiers AS jsonb) ->> coalesce(plan_before_restriction, plan), 'shared')
                   AS wanted
        FROM tenants
        WHERE stripe_subscription_id IS NOT NULL AND status IN ('active', 'suspended') AND moving_since IS NULL
          AND (CAST(:tenant AS uuid) IS NULL OR id = CAST(:tenant AS uuid))
    ) t
    WHERE wanted <> placement
    ORDER BY id
    LIMIT :limit
    """
)
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
# A claim older than this whose move lock is free was left by a move that died: the mover releases it.
# The margin is for replicas of a version before the move lock, whose moves hold none.
STALE_AFTER = timedelta(minutes=10)
_CLAIMED = text(
    "SELECT id, placement, moving_since FROM tenants WHERE moving_since < now() - CAST(:stale AS interval)"
    " AND (CAST(:tenant AS uuid) IS NULL OR id = CAST(:tenant AS uuid)) ORDER BY id"
)
_SECRET = text("SELECT placement_secret FROM tenants WHERE id = :id FOR UPDATE")
_SET_SECRET = text("UPDATE tenants SET placement_secret = :sealed WHERE id = :id")


def utcnow() -> datetime:
    return datetime.now(UTC)


def backoff(attempts: int) -> timedelta:
    return min(BACKOFF_BASE * (1 << min(attempts - 1, 20)), BACKOFF_MAX)


def _params(settings: Settings, tenant_id: uuid.UUID | None = None, limit: int = 100) -> dict[str, Any]:
    return {"plan_tiers": json.dumps(settings.plan_tiers), "tenant": tenant_id, "limit": limit}


def _state(secrets: SecretBox, sealed: bytes | None, wanted: str) -> dict[str, Any] | None:
    """The recorded failures of the move to `wanted` (a record for another tier is an old intent)."""
    if not sealed:
        return None
    raw = secrets.open(sealed).get(STATE_KEY)
    state: dict[str, Any] | None = json.loads(raw) if raw else None
    return state if state is not None and state.get("tier") == wanted else None


def _public(row: Any, state: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "tenant_id": str(row.id),
        "from": row.placement,
        "tier": row.wanted,
        "state": "retrying" if state else "pending",
        "attempts": state["attempts"] if state else 0,
        "last_error": state["error"] if state else None,
        "next_attempt_at": state["next_at"] if state else None,
    }


def _describe(exc: Exception) -> str:
    """What an operator reads as the move's last error (the database's own message, not our SQL)."""
    if isinstance(exc, TenantryError):
        described = f"{exc.code}: {exc.detail}"
    elif isinstance(exc, DBAPIError):
        described = f"{type(exc.orig).__name__}: {exc.orig}"
    else:
        described = f"{type(exc).__name__}: {exc}"
    return described[:300]


@dataclass
class MoveRun:
    ran: bool = True
    moved: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    deferred: int = 0
    released: list[str] = field(default_factory=list)  # claims of dead moves taken back


class TierMover:
    def __init__(self, settings: Settings, db: Database, *, clock: Clock = utcnow) -> None:
        self._settings = settings
        self._db = db
        self._secrets = SecretBox(settings.secret_keys)
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.last_run: MoveRun | None = None
        self.unrecorded = 0  # moves done whose audit record could not be written

    def wake(self) -> None:
        """Run a pass now (a webhook just changed a plan on this replica)."""
        self._wake.set()

    async def run_once(self, tenant_id: uuid.UUID | None = None) -> MoveRun:
        """Move every due tenant whose backoff has passed, if no other replica is doing so."""
        run = MoveRun()
        async with self._db.system() as lock:
            if not (await lock.execute(_TRY_LOCK, {"key": LOCK_KEY})).scalar_one():
                return MoveRun(ran=False)
            run.released = await self._release_stale(tenant_id)
            due = (await lock.execute(_DUE, _params(self._settings, tenant_id))).all()
            for row in due:
                now = self._clock()
                state = _state(self._secrets, row.placement_secret, row.wanted)
                if state is not None and datetime.fromisoformat(state["next_at"]) > now:
                    run.deferred += 1
                    continue
                try:
                    await self._move(row)
                except Exception as exc:  # reported and retried; the other tenants go on
                    await self._failed(row.id, row.wanted, state, exc, now)
                    run.failed.append(str(row.id))
                else:
                    run.moved.append(str(row.id))
        self.last_run = run
        return run

    async def _release_stale(self, tenant_id: uuid.UUID | None) -> list[str]:
        """Unwind the claims of moves that died (`tiers.release_stale_claim`): without this, a crash in
        the middle of a move would leave the tenant refused (`tenant_moving`) until an admin moved it
        again. Each release is audited in the tenant's trail."""
        released = []
        async with self._db.system() as conn:
            claimed = (await conn.execute(_CLAIMED, {"stale": STALE_AFTER, "tenant": tenant_id})).all()
        for row in claimed:
            try:
                if not await tiers.release_stale_claim(self._db, self._settings, row.id, row.moving_since):
                    continue
            except Exception:  # its source out of reach, say: tried again next pass
                log.exception("the stale move claim of tenant %s could not be released", row.id)
                continue
            log.warning("released the claim a dead move left on tenant %s (since %s)", row.id, row.moving_since)
            released.append(str(row.id))
            since = {"moving_since": row.moving_since.isoformat(), "tier": row.placement}
            await self._record(row.id, "tenant.tier_move_released", since, {"moving_since": None})
        return released

    async def _move(self, row: Any) -> None:
        if row.retired_placement is not None:
            safe, why = await tiers.old_copy_safety(self._db, self._settings, row.id)
            if not safe:
                raise Conflict(f"the old copy of the last move is kept: {why}", code="cleanup_pending")
            await tiers.cleanup_tenant(self._db, self._settings, row.id)
        result = await tiers.move_tenant(self._db, self._settings, row.id, row.wanted, unless_moving=True)
        log.info("tier move of tenant %s for its plan: %s -> %s", row.id, row.placement, result["tier"])
        after = {"tier": result["tier"], "plan_tier": row.wanted}
        after |= {k: result[k] for k in ("rows_copied", "audit_records_copied", "old_copy") if k in result}
        await self._record(row.id, "tenant.tier_move", {"tier": row.placement}, after)

    async def _record(self, tenant_id: uuid.UUID, action: str, before: dict[str, Any], after: dict[str, Any]) -> None:
        """What the mover did in the tenant's trail (where it is now), as an admin's change is: who (the
        mover), what before and after. The change is done: a record that cannot be written is logged and
        counted (`/health`'s `audit.lost_records`), and does not make it fail or run again."""
        self._db.router.forget(tenant_id)  # where the trail is now, not where this replica last saw it
        try:
            async with self._db.system() as conn:
                await record_change(self._db, conn, tenant_id, action, tenant_id, before, after, by=MOVER)
        except Exception:
            log.exception("the audit record of the mover's %s of tenant %s could not be written", action, tenant_id)
            self.unrecorded += 1

    async def _failed(
        self, tenant_id: uuid.UUID, wanted: str, state: dict[str, Any] | None, exc: Exception, now: datetime
    ) -> None:
        attempts = (state["attempts"] if state else 0) + 1
        error = _describe(exc)
        record = {
            "tier": wanted,
            "attempts": attempts,
            "error": error,
            "failed_at": now.isoformat(),
            "next_at": (now + backoff(attempts)).isoformat(),
        }
        log.warning("tier move of tenant %s to %s failed (attempt %d): %s", tenant_id, wanted, attempts, error)
        async with self._db.system() as conn:
            sealed = (await conn.execute(_SECRET, {"id": tenant_id})).scalar_one()
            secret = self._secrets.open(sealed) if sealed else {}
            secret[STATE_KEY] = json.dumps(record)
            await conn.execute(_SET_SECRET, {"id": tenant_id, "sealed": self._secrets.seal(secret)})

    async def run(self) -> None:
        """A pass every `tier_move_interval_seconds`, or at once when woken, until `stop()`."""
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self.run_once()
            except Exception:  # the task must outlive a bad pass (the database away, say)
                log.exception("tier move pass failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.tier_move_interval_seconds):
                    await self._wake.wait()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()


async def pending(db: Database, settings: Settings, tenant_id: uuid.UUID) -> dict[str, Any] | None:
    """The tenant's plan-driven move still to run (and its failures so far), or None."""
    async with db.system() as conn:
        row = (await conn.execute(_DUE, _params(settings, tenant_id, 1))).one_or_none()
    if row is None:
        return None
    return _public(row, _state(SecretBox(settings.secret_keys), row.placement_secret, row.wanted))


async def health(db: Database, settings: Settings) -> dict[str, Any]:
    """`/health`'s `tier_moves`: plan-driven moves still to run, the failing ones named. Reported, never
    failing: one tenant's stuck move must not take every replica out of its load balancer (the tenant's
    own `/health?tenant=` fails, and its calls are still served where its data is)."""
    secrets = SecretBox(settings.secret_keys)
    async with db.system() as conn:
        rows = (await conn.execute(_DUE, _params(settings))).all()
    moves = [_public(row, _state(secrets, row.placement_secret, row.wanted)) for row in rows]
    failing = [m for m in moves if m["attempts"]]
    return {"status": "ok", "due": len(moves), "failing_count": len(failing), "failing": failing[:10]}


async def tenant_health(db: Database, settings: Settings, tenant_id: uuid.UUID) -> dict[str, Any]:
    """`/health?tenant=`'s `tier_move`: the tenant's plan-driven move, if one is due; fails while failing."""
    move = await pending(db, settings, tenant_id)
    if move is None:
        return {"status": "ok", "due": False}
    return {"status": "fail" if move["attempts"] else "ok", "due": True, **move}
