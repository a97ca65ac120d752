"""Putting a tenant on its isolation tier: provisioning, moves between tiers, cleanup and offboarding.

Which tier: the tenant's own `tier` when an admin set one, else its plan's (`TENANTRY_PLAN_TIERS`).
Where its data is now: `tenants.placement` (migration 0014), which only `move_tenant` changes.

A move (also how a new tenant is provisioned: a move of nothing) runs in steps, each idempotent:

1. claim: the tenant row is marked `moving_since` and every router forgets the tenant, so its calls
   are refused with a retryable `tenant_moving` (503, Retry-After) until the switch;
2. provision the target copy (`db/provision.py`) and empty it of the tenant's rows (a retried move);
3. fence the source: its `tenant_storage` row and its audit chain head are marked `moved`, which waits
   for the writes and appends in flight (they hold those rows' locks) and makes any later one there
   fail (`tenant_moving`; the ledger's drain leaves such audit records pending and retries them), so a
   call on a replica that had not yet heard of the move cannot land in the copy being left;
4. copy the rows and the audit trail (records as stored, seq and hashes unchanged, and the chain
   head) and verify them: row count and checksum per table, source against target;
5. switch: one update of the tenant row (placement, revision, the old copy kept as `retired_placement`)
   whose commit every router hears of.

A failure before the switch unfences the source and clears the claim: the tenant stays where it was.
The old copy stays (fenced) until `cleanup_tenant` (one whose data store was empty, as when a new tenant
is provisioned, is deleted at once, its verified trail with it). A move needs the previous one's copy cleaned up.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

from sqlalchemy import null, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from tenantry.db import tier_schema
from tenantry.db.engine import Database, note_tenant_changed
from tenantry.db.models import tenants
from tenantry.db.provision import (
    check_server,
    copy_rows,
    copy_trail,
    create_copy,
    drop_copy,
    fingerprint,
    owner_transaction,
)
from tenantry.db.router import DATABASE, SCHEMA, SHARED, TIERS, Placement, database_name, schema_name
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


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])?$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")


def check_database_url(tier: str, url: str | None) -> str | None:
    """A database-tier tenant may name another server: a `postgresql+asyncpg://` URL, database included."""
    if url is None:
        return None
    if tier != DATABASE:
        raise BadRequest("only a database-tier tenant may name a database URL", code="invalid_database_url")
    shape = "the database URL must be postgresql+asyncpg://user[:password]@host[:port]/database"
    try:
        parts = make_url(url)
        port = parts.port
    except Exception:  # whatever SQLAlchemy refuses to parse
        raise BadRequest(shape, code="invalid_database_url") from None
    plain = all(_NAME.match(v) for v in (parts.database or "", parts.username or "postgres"))
    if parts.drivername != "postgresql+asyncpg" or not _HOST.match(parts.host or "") or not plain or parts.query:
        raise BadRequest(shape, code="invalid_database_url")
    if port is not None and not 0 < port < 65_536:
        raise BadRequest(shape, code="invalid_database_url")
    return url


async def check_reachable(url: str | None) -> None:
    """A database URL an admin gives must answer before anything is changed for it (a 400, not a 5xx)."""
    if url is None:
        return
    try:
        await check_server(url)
    except Exception as exc:  # whatever stops the connection: the admin's URL, not the gateway, is at fault
        raise BadRequest(
            f"the database server does not answer: {type(exc).__name__}", code="database_unreachable"
        ) from None


def _target(settings: Settings, tenant_id: uuid.UUID, tier: str, url: str | None) -> Placement:
    if tier == SHARED:
        return Placement(SHARED)
    if tier == SCHEMA:
        return Placement(SCHEMA, schema_name(tenant_id))
    if url:
        return Placement(DATABASE, make_url(url).database, url)
    shared = make_url(settings.database_url).database or "tenantry"
    return Placement(DATABASE, database_name(shared, tenant_id))


def _placement(secrets: SecretBox, row: Any) -> Placement:
    url = None
    if row.placement_url:
        password = secrets.open(row.placement_secret)["password"] if row.placement_secret else None
        url = make_url(row.placement_url).set(password=password).render_as_string(hide_password=False)
    return Placement(row.placement, row.placement_name, url, row.placement_revision)


def _retired(secrets: SecretBox, placement: Placement) -> dict[str, Any]:
    sealed = secrets.seal({"url": placement.url}) if placement.url else None
    return {
        "tier": placement.tier,
        "name": placement.name,
        "sealed_url": base64.b64encode(sealed).decode() if sealed else None,
    }


def _unretire(secrets: SecretBox, retired: dict[str, Any]) -> Placement:
    url = secrets.open(base64.b64decode(retired["sealed_url"]))["url"] if retired.get("sealed_url") else None
    return Placement(retired["tier"], retired.get("name"), url, tier_schema.HEAD)


async def _set(db: Database, tenant_id: uuid.UUID, **values: Any) -> None:
    async with db.system() as conn:
        await conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(**values))
        note_tenant_changed(conn, tenant_id)


# The rows a move fences in the copy it leaves: what every write of the data store, and every append to
# the audit trail, updates (and so locks) in the same transaction.
_FENCED = ("tenant_storage", "audit_chain_heads")


async def _fence(conn: AsyncConnection, tenant_id: uuid.UUID, moved: bool) -> None:
    for table in _FENCED:
        if moved:
            row = text(f"INSERT INTO {table} (tenant_id) VALUES (:t) ON CONFLICT DO NOTHING")  # noqa: S608 (constants)
            await conn.execute(row, {"t": tenant_id})
        fence = text(f"UPDATE {table} SET moved = :m WHERE tenant_id = :t")  # noqa: S608 (constants)
        await conn.execute(fence, {"t": tenant_id, "m": moved})


async def _empty(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    # The storage row first: a fenced one would refuse the counting trigger's updates. Audit records are
    # deleted only here, as the owner (the application role cannot): a copy left behind, or a target
    # emptied of what an interrupted move put there.
    for table in ("tenant_storage", "tenant_data", "audit_chain_heads", "audit_records"):
        await conn.execute(text(f"DELETE FROM {table} WHERE tenant_id = :t"), {"t": tenant_id})  # noqa: S608


async def move_tenant(
    db: Database, settings: Settings, tenant_id: uuid.UUID, tier: str, *, database_url: str | None = None
) -> dict[str, Any]:
    """Put the tenant's data plane on `tier` (see the module docstring). Returns what was done."""
    check_tier(tier)
    check_database_url(tier, database_url)
    await check_reachable(database_url)
    secrets = SecretBox(settings.secret_keys)
    target = _target(settings, tenant_id, tier, database_url)
    async with db.system() as conn:
        row = (await conn.execute(_CLAIM, {"id": tenant_id})).one_or_none()
        if row is None:
            raise NotFound(f"no tenant {tenant_id}", code="tenant_not_found")
        source = _placement(secrets, row)
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
        if row.retired_placement is not None:
            raise Conflict(
                "the copy the previous move left behind must be cleaned up first (tenantry tenant cleanup)",
                code="cleanup_pending",
            )
        await conn.execute(
            text("UPDATE tenants SET moving_since = now() WHERE id = :id"),
            {"id": tenant_id},
        )
        note_tenant_changed(conn, tenant_id)
    source_url, target_url = db.router.owner_url(source), db.router.owner_url(target)
    fenced = False
    try:
        revision = 0
        if target.tier != SHARED:
            revision = await create_copy(db.system_engine, target_url, target, db.app_role)
            target = Placement(target.tier, target.name, target.url, revision)
        async with owner_transaction(db.system_engine, target_url, target) as conn:
            await _empty(conn, tenant_id)
        async with owner_transaction(db.system_engine, source_url, source) as conn:
            await _fence(conn, tenant_id, moved=True)
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
            sealed = secrets.seal({"password": parts.password or ""}) if parts.password else None
            url_without_password = parts.set(password=None).render_as_string(hide_password=False)
        await _set(
            db,
            tenant_id,
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
                await _fence(conn, tenant_id, moved=False)
        await _set(db, tenant_id, moving_since=None)
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
            await _empty(conn, tenant_id)
    else:
        if retired.tier == DATABASE:
            db.router.engines.discard(db.router.app_url(retired))
        await drop_copy(db.system_engine, url, retired)
    await _set(db, tenant_id, retired_placement=null())
    return {"tenant_id": str(tenant_id), "cleaned": retired.tier}


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
                    "SELECT plan, tier, placement, placement_name, placement_url, placement_revision, moving_since,"
                    " retired_placement FROM tenants WHERE id = :id"
                ),
                {"id": tenant_id},
            )
        ).one_or_none()
    if row is None:
        raise NotFound(f"no tenant {tenant_id}", code="tenant_not_found")
    return {
        "tenant_id": str(tenant_id),
        "tier": row.placement,
        "wanted": desired_tier(settings, row.plan, row.tier),
        "override": row.tier,
        "name": row.placement_name,
        "server": make_url(row.placement_url).set(password=None).render_as_string() if row.placement_url else None,
        "revision": row.placement_revision,
        "revision_head": tier_schema.HEAD,
        "moving_since": row.moving_since.isoformat() if row.moving_since else None,
        "retired": {"tier": row.retired_placement["tier"], "name": row.retired_placement.get("name")}
        if row.retired_placement
        else None,
    }
