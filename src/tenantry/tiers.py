"""Putting a tenant on its isolation tier: provisioning, moves between tiers, cleanup and offboarding.

Which tier: the tenant's own `tier` when an admin set one, else its plan's (`TENANTRY_PLAN_TIERS`).
Where its data is now: `tenants.placement` (migration 0014), which only `move_tenant` changes.

A move (also how a new tenant is provisioned: a move of nothing) runs under the tenant's move lock, in steps:

1. claim: the tenant row is marked `moving_since` and every router forgets the tenant, so its calls
   are refused with a retryable `tenant_moving` (503, Retry-After) until the switch;
2. provision the target copy (`db/provision.py`; on another server, first the tenant's own login
   there, `db/logins.py`) and empty it of the tenant's rows (a retried move);
3. fence the source: its `tenant_storage` row and audit chain head are marked `moved`, which waits for
   the writes in flight (they hold those rows' locks) and fails any later one there (`tenant_moving`;
   the drain retries such records), so a replica that had not heard of the move cannot write there;
4. copy the rows and the audit trail (records as stored, seq and hashes unchanged, and the chain
   head) and verify them: row count and checksum per table, source against target;
5. switch: one update of the tenant row (placement, revision, the old copy kept as `retired_placement`)
   whose commit every router hears of.

A failure before the switch unfences the source and clears the claim: the tenant stays where it was.
The old copy stays (fenced) until `cleanup_tenant` (deleted at once when its data store was empty, as
for a new tenant, its verified trail with it); the next move needs it cleaned up.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import null, text, update
from sqlalchemy.engine import make_url

from tenantry.db import logins, tier_schema
from tenantry.db.engine import Database, note_tenant_changed
from tenantry.db.models import tenants
from tenantry.db.provision import (
    check_database_url,
    check_reachable,
    copy_rows,
    copy_trail,
    create_copy,
    drop_copy,
    empty,
    fence,
    fingerprint,
    move_lock,
    owner_transaction,
)
from tenantry.db.router import (
    DATABASE,
    SCHEMA,
    SHARED,
    TIERS,
    Placement,
    database_name,
    schema_name,
    unseal_placement,
)
from tenantry.errors import BadRequest, Conflict, NotFound
from tenantry.secrets import SecretBox
from tenantry.settings import Settings
from tenantry.tenancy import TenantStatus

_CLAIM = text(
    """
    SELECT status, plan, tier, placement, placement_name, placement_url, placement_secret, placement_revision,
           moving_since, retired_placement
    FROM tenants WHERE id = :id FOR UPDATE
    """
)


def check_tier(tier: str) -> str:
    if tier not in TIERS:
        raise BadRequest(f"unknown tier {tier!r}; tiers are {list(TIERS)}", code="invalid_tier")
    return tier


def desired_tier(settings: Settings, plan: str, override: str | None) -> str:
    return override or settings.plan_tier(plan)


def _target(settings: Settings, tenant_id: uuid.UUID, tier: str, url: str | None) -> Placement:
    if tier == SHARED:
        return Placement(SHARED)
    if tier == SCHEMA:
        return Placement(SCHEMA, schema_name(tenant_id))
    if url:
        return Placement(DATABASE, make_url(url).database, url)
    shared = make_url(settings.database_url).database or "tenantry"
    return Placement(DATABASE, database_name(shared, tenant_id))


def _retired(secrets: SecretBox, placement: Placement) -> dict[str, Any]:
    sealed = None
    if placement.url:
        login = {"app_user": placement.app_user or "", "app_password": placement.app_password or ""}
        sealed = secrets.seal({"url": placement.url, **login})
    return {
        "tier": placement.tier,
        "name": placement.name,
        "sealed_url": base64.b64encode(sealed).decode() if sealed else None,
    }


def _unretire(secrets: SecretBox, retired: dict[str, Any]) -> Placement:
    opened = secrets.open(base64.b64decode(retired["sealed_url"])) if retired.get("sealed_url") else {}
    return Placement(
        retired["tier"],
        retired.get("name"),
        opened.get("url"),
        tier_schema.HEAD,
        app_user=opened.get("app_user") or None,
        app_password=opened.get("app_password") or None,
    )


# How long a move waits for another of the tenant to end (two deliveries of one onboarding, say).
MOVE_LOCK_WAIT_S = 10.0
_CLAIM_MOVE = text("UPDATE tenants SET moving_since = clock_timestamp() WHERE id = :id RETURNING moving_since")


async def _switch(
    db: Database, tenant_id: uuid.UUID, claimed: datetime, *, taken_back_ok: bool = False, **values: Any
) -> None:
    """End the move that claimed the tenant at `claimed` (switching it, or unwinding): only while that
    claim still stands. Recovery may have judged it stale and taken it back (a keeper connection cut
    off, a replica of an older version): then the move fails instead of switching the tenant to a copy
    that writes may have passed by since (an unwind has nothing left to undo)."""
    async with db.system() as conn:
        mine = (tenants.c.id == tenant_id) & (tenants.c.moving_since == claimed)
        if (await conn.execute(update(tenants).where(mine).values(**values))).rowcount == 1:
            note_tenant_changed(conn, tenant_id)
            return
    if not taken_back_ok:
        raise Conflict("the move's claim was taken back as stale; move again", code="tenant_moving")


async def move_tenant(
    db: Database,
    settings: Settings,
    tenant_id: uuid.UUID,
    tier: str,
    *,
    database_url: str | None = None,
    unless_moving: bool = False,
) -> dict[str, Any]:
    """Put the tenant's data plane on `tier` (see the module docstring). Returns what was done.
    `unless_moving`: refuse (`tenant_moving`) a tenant another move has claimed, even one a crash cut off
    (the mover leaves those to its release of stale claims; an admin re-running a move cut off by a
    crash must be able to). A move running now (its lock held, wherever) is waited for, up to
    `MOVE_LOCK_WAIT_S` (not by the mover), then this one runs from where it left the tenant."""
    check_tier(tier)
    check_database_url(tier, database_url)
    await check_reachable(database_url)
    async with move_lock(db.system_engine, tenant_id, wait_s=0 if unless_moving else MOVE_LOCK_WAIT_S) as had:
        if not had:
            raise Conflict("another move of this tenant is under way", code="tenant_moving")
        return await _move(db, settings, tenant_id, tier, database_url, unless_moving)


async def _move(
    db: Database, settings: Settings, tenant_id: uuid.UUID, tier: str, database_url: str | None, unless_moving: bool
) -> dict[str, Any]:
    secrets = SecretBox(settings.secret_keys)
    target = _target(settings, tenant_id, tier, database_url)
    async with db.system() as conn:
        row = (await conn.execute(_CLAIM, {"id": tenant_id})).one_or_none()
        if row is None:
            raise NotFound(f"no tenant {tenant_id}", code="tenant_not_found")
        source = unseal_placement(secrets, row)
        if (source.tier, source.name, source.url) == (target.tier, target.name, target.url):
            if row.moving_since is not None:
                await conn.execute(text("UPDATE tenants SET moving_since = NULL WHERE id = :id"), {"id": tenant_id})
                note_tenant_changed(conn, tenant_id)
            return {"tenant_id": str(tenant_id), "tier": tier, "moved": False}
        if row.status == TenantStatus.DEPROVISIONED and tier != SHARED:
            raise Conflict("a deprovisioned tenant can only be moved back to shared", code="tenant_deprovisioned")
        if source.tier != SHARED and source.revision < tier_schema.HEAD:
            raise Conflict(
                "the tenant's copy is on an older revision: run `tenantry migrate` first", code="tenant_not_migrated"
            )
        if unless_moving and row.moving_since is not None:
            raise Conflict("another move of this tenant is under way", code="tenant_moving")
        if row.retired_placement is not None:
            raise Conflict(
                "the copy the previous move left behind must be cleaned up first (tenantry tenant cleanup)",
                code="cleanup_pending",
            )
        claimed = (await conn.execute(_CLAIM_MOVE, {"id": tenant_id})).scalar_one()
        note_tenant_changed(conn, tenant_id)
    source_url, target_url = db.router.owner_url(source), db.router.owner_url(target)
    fenced = False
    try:
        revision = 0
        if target.url:  # another server: reached as the tenant's own login there (`db/logins.py`)
            target = replace(target, app_user=logins.login_name(db.app_role, tenant_id))
            target = replace(target, app_password=logins.new_password())
            await logins.ensure_login(target_url, str(target.app_user), str(target.app_password), db.app_role)
        if target.tier != SHARED:
            revision = await create_copy(db.system_engine, target_url, target, db.app_role)
            target = replace(target, revision=revision)
        async with owner_transaction(db.system_engine, target_url, target) as conn:
            await empty(conn, tenant_id)
        async with owner_transaction(db.system_engine, source_url, source) as conn:
            await fence(conn, tenant_id, moved=True)
        fenced = True
        async with (
            owner_transaction(db.system_engine, source_url, source) as src,
            owner_transaction(db.system_engine, target_url, target) as dst,
        ):
            copied = await copy_rows(src, dst, tenant_id)
            records = await copy_trail(src, dst, tenant_id, make_months=target.tier != SHARED)
            before, after = await fingerprint(src, tenant_id), await fingerprint(dst, tenant_id)
            if before != after:
                raise Conflict(f"the copy does not match its source: {before} != {after}", code="move_verify_failed")
        sealed = None
        url_without_password = None
        if target.url:
            parts = make_url(target.url)
            login = {"app_user": str(target.app_user), "app_password": str(target.app_password)}
            sealed = secrets.seal({"password": parts.password or "", **login})
            # `URL.set` ignores a None: only `_replace` takes the password out.
            url_without_password = parts._replace(password=None).render_as_string(hide_password=False)
        await _switch(
            db,
            tenant_id,
            claimed,
            placement=target.tier,
            placement_name=target.name,
            placement_url=url_without_password,
            placement_secret=sealed,
            placement_revision=revision,
            moving_since=None,
            retired_placement=_retired(secrets, source),
        )
    except BaseException:
        if fenced:
            async with owner_transaction(db.system_engine, source_url, source) as conn:
                await fence(conn, tenant_id, moved=False)
        await _switch(db, tenant_id, claimed, moving_since=None, taken_back_ok=True)
        raise
    # An old copy whose data store held nothing (provisioning a new tenant) is not kept for an operator to
    # clean up: the few audit records it may hold (the CLI records a tenant's creation in the shared trail,
    # in the transaction that creates it) were copied and verified like the rest.
    cleaned = copied == 0 and (await cleanup_tenant(db, settings, tenant_id))["cleaned"] is not None
    return {
        "tenant_id": str(tenant_id),
        "tier": target.tier,
        "moved": True,
        "from": source.tier,
        "rows_copied": copied,
        "audit_records_copied": records,
        "verified": after,
        "old_copy": "deleted (it was empty)" if cleaned else "kept until cleanup",
    }


async def release_stale_claim(db: Database, settings: Settings, tenant_id: uuid.UUID, claimed: datetime) -> bool:
    """Unwind what a dead move left: its claim (`claimed`, judged stale), if it still stands and its move
    lock is free (the switch clears the claim in the same update, so the tenant is still where it was).
    Its source is unfenced and the claim cleared, as the move's own unwinding would have; the next move
    empties or replaces what it half made. Returns whether it did."""
    async with move_lock(db.system_engine, tenant_id) as free:
        if not free:
            return False  # a move of the tenant is running
        async with db.system() as conn:
            row = (await conn.execute(_CLAIM, {"id": tenant_id})).one_or_none()
        if row is None or row.moving_since != claimed:
            return False
        source = unseal_placement(SecretBox(settings.secret_keys), row)
        async with owner_transaction(db.system_engine, db.router.owner_url(source), source) as conn:
            await fence(conn, tenant_id, moved=False)
        await _switch(db, tenant_id, row.moving_since, moving_since=None, taken_back_ok=True)
        return True


async def cleanup_tenant(db: Database, settings: Settings, tenant_id: uuid.UUID) -> dict[str, Any]:
    """Delete the copy the last move left behind (its rows in the shared tables, or its schema or database)."""
    secrets = SecretBox(settings.secret_keys)
    async with db.system() as conn:
        row = (await conn.execute(_CLAIM, {"id": tenant_id})).one_or_none()
    if row is None:
        raise NotFound(f"no tenant {tenant_id}", code="tenant_not_found")
    if row.retired_placement is None:
        return {"tenant_id": str(tenant_id), "cleaned": None}
    retired = _unretire(secrets, row.retired_placement)
    url = db.router.owner_url(retired)
    if retired.tier == SHARED:
        async with owner_transaction(db.system_engine, url, retired) as conn:
            await empty(conn, tenant_id)
    else:
        if retired.tier == DATABASE:
            db.router.engines.discard(db.router.app_url(retired))
        await drop_copy(db.system_engine, url, retired)
        if retired.app_user:
            await logins.drop_login(url, retired.app_user)
    async with db.system() as conn:
        await conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(retired_placement=null()))
        note_tenant_changed(conn, tenant_id)
    return {"tenant_id": str(tenant_id), "cleaned": retired.tier}


_OLD_COPY = text(
    "SELECT (SELECT moved FROM tenant_storage WHERE tenant_id = :t) AS fenced,"
    " (SELECT count(*) FROM tenant_data WHERE tenant_id = :t) AS keys,"
    " (SELECT moved FROM audit_chain_heads WHERE tenant_id = :t) AS trail_fenced,"
    " (SELECT count(*) FROM audit_records WHERE tenant_id = :t) AS records"
)


async def old_copy_safety(db: Database, settings: Settings, tenant_id: uuid.UUID) -> tuple[bool, str]:
    """Whether the copy the last move left behind may be dropped with no operator to decide, and why:
    it must still be fenced (no write has reached it since the switch verified every row of it into the
    current copy) or hold nothing, and the current copy must answer (else the old one may be the last
    good copy). A copy that cannot be reached is not judged safe."""
    secrets = SecretBox(settings.secret_keys)
    async with db.system() as conn:
        row = (await conn.execute(_CLAIM, {"id": tenant_id})).one_or_none()
    if row is None:
        raise NotFound(f"no tenant {tenant_id}", code="tenant_not_found")
    if row.retired_placement is None:
        return True, "there is no old copy"
    if row.moving_since is not None:
        return False, "another move of this tenant is under way"
    found = {}
    for what, placement in (
        ("current", unseal_placement(secrets, row)),
        ("old", _unretire(secrets, row.retired_placement)),
    ):
        try:
            async with owner_transaction(db.system_engine, db.router.owner_url(placement), placement) as conn:
                found[what] = (await conn.execute(_OLD_COPY, {"t": tenant_id})).one()
        except Exception as exc:  # whatever keeps us from looking: not judged safe
            return False, f"the {what} copy ({placement.tier}) does not answer: {type(exc).__name__}"
    if found["old"].fenced is not True and found["old"].keys:
        return False, f"the old copy ({row.retired_placement['tier']}) is no longer fenced and holds rows"
    if found["old"].trail_fenced is not True and found["old"].records:
        return False, f"the old copy's audit trail ({row.retired_placement['tier']}) is no longer fenced"
    return True, "the old copy is fenced (or empty) and the current copy answers"


async def place_tenant(db: Database, settings: Settings, tenant_id: uuid.UUID) -> dict[str, Any]:
    """Provisioning: put a tenant on the tier its override or its plan names (a repeat changes nothing)."""
    async with db.system() as conn:
        row = (
            await conn.execute(text("SELECT plan, tier FROM tenants WHERE id = :id"), {"id": tenant_id})
        ).one_or_none()
    if row is None:
        raise NotFound(f"no tenant {tenant_id}", code="tenant_not_found")
    tier = desired_tier(settings, row.plan, row.tier)
    if tier == DATABASE:
        # Keep a URL an admin gave: only the tier is the plan's to decide.
        placement = await db.router.placement(tenant_id)
        if placement.tier == DATABASE:
            return {"tenant_id": str(tenant_id), "tier": tier, "moved": False}
    return await move_tenant(db, settings, tenant_id, tier)


async def offboard_tier(db: Database, settings: Settings, tenant_id: uuid.UUID) -> dict[str, Any]:
    """Offboarding: archive the tenant's data into the shared tables (a move to shared), then drop its schema
    or database. A shared-tier tenant has nothing to do."""
    moved = await move_tenant(db, settings, tenant_id, SHARED)
    cleaned = await cleanup_tenant(db, settings, tenant_id)
    return {**moved, "dropped": cleaned["cleaned"]}


async def describe(db: Database, settings: Settings, tenant_id: uuid.UUID) -> dict[str, Any]:
    """Where the tenant's data plane is now, what its override or plan asks for, and any move state."""
    async with db.system() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT plan, plan_before_restriction, tier, placement, placement_name, placement_url,"
                    " placement_revision, moving_since, retired_placement FROM tenants WHERE id = :id"
                ),
                {"id": tenant_id},
            )
        ).one_or_none()
    if row is None:
        raise NotFound(f"no tenant {tenant_id}", code="tenant_not_found")
    return {
        "tenant_id": str(tenant_id),
        "tier": row.placement,
        # The plan paid for: dunning's restriction does not move data (`tier_moves.py`).
        "wanted": desired_tier(settings, row.plan_before_restriction or row.plan, row.tier),
        "override": row.tier,
        "name": row.placement_name,
        "server": make_url(row.placement_url)._replace(password=None).render_as_string() if row.placement_url else None,
        "revision": row.placement_revision,
        "revision_head": tier_schema.HEAD,
        "moving_since": row.moving_since.isoformat() if row.moving_since else None,
        "retired": {"tier": row.retired_placement["tier"], "name": row.retired_placement.get("name")}
        if row.retired_placement
        else None,
    }
