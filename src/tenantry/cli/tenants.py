"""`tenantry tenant ...` and `tenantry key ...`: the same service calls the admin API makes."""

from __future__ import annotations

import argparse
import asyncio
import re
import uuid
from typing import Any

from tenantry import tenants as tenant_service
from tenantry import tier_moves, tiers
from tenantry.audit.changes import record_change
from tenantry.auth import api_keys
from tenantry.cli.common import emit, json_object, with_db
from tenantry.db.engine import Database
from tenantry.db.provision import check_database_url
from tenantry.errors import TenantryError
from tenantry.plans import validate_overrides
from tenantry.settings import Settings
from tenantry.tenancy import TenantStatus, parse_tenant_id

ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
TOOL = re.compile(r"[A-Za-z0-9_*?.:-]{1,200}")

# --- tenants and keys ------------------------------------------------------------------------------


def cmd_tenant_create(args: argparse.Namespace, settings: Settings) -> int:
    plan = args.plan or settings.default_plan
    if plan not in settings.plans:
        raise TenantryError(f"unknown plan {plan!r}; plans are {settings.plans}", code="invalid_plan")

    tier = tiers.desired_tier(settings, plan, args.tier)
    check_database_url(tier, args.database_url)

    async def work(db: Database) -> dict[str, Any]:
        async with db.system() as conn:
            tenant = await tenant_service.create_tenant(conn, args.name, plan, tier=args.tier)
            await record_change(db, conn, tenant.id, "tenant.create", tenant.id, None, tenant.public())
        if tier != "shared":  # provisioned before it has a key to call with
            await tiers.move_tenant(db, settings, tenant.id, tier, database_url=args.database_url)
        async with db.system() as conn:
            tenant = await tenant_service.get_tenant(conn, tenant.id)
            out: dict[str, Any] = {"tenant": tenant.public()}
            if args.with_key:
                info, secret = await api_keys.create_key(conn, tenant.id, "default")
                out["key"] = {**info.public(), "secret": secret}
                await record_change(db, conn, tenant.id, "key.create", info.id, None, info.public())
        return out

    out = asyncio.run(with_db(settings, work))
    human = f"tenant {out['tenant']['id']} ({args.name}, plan {plan}, tier {out['tenant']['tier']})"
    if "key" in out:
        human += f"\nAPI key (shown once): {out['key']['secret']}"
    emit(args, out, human)
    return 0


def cmd_tenant_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(db: Database) -> list[dict[str, Any]]:
        async with db.system() as conn:
            return [t.public() for t in await tenant_service.list_tenants(conn, status=args.status, limit=1000)]

    found = asyncio.run(with_db(settings, work))
    emit(
        args, {"tenants": found}, "\n".join(f"{t['id']}  {t['status']:<13} {t['plan']:<10} {t['name']}" for t in found)
    )
    return 0


def cmd_tenant_set(args: argparse.Namespace, settings: Settings) -> int:
    if args.plan is not None and args.plan not in settings.plans:
        raise TenantryError(f"unknown plan {args.plan!r}; plans are {settings.plans}", code="invalid_plan")
    tenant_id = parse_tenant_id(args.tenant)
    limits = None
    if args.limits is not None:
        limits = validate_overrides(json_object(args.limits, "--limits", "invalid_limits"))

    async def work(db: Database) -> dict[str, Any]:
        async with db.system() as conn:
            status = TenantStatus(args.status) if args.status else None
            before = (await tenant_service.get_tenant(conn, tenant_id)).public()
            tenant = await tenant_service.update_tenant(
                conn, tenant_id, plan=args.plan, status=status, limits=limits, tier=args.tier
            )
            await record_change(db, conn, tenant_id, "tenant.update", tenant_id, before, tenant.public())
            return tenant.public()

    tenant = asyncio.run(with_db(settings, work))
    emit(args, {"tenant": tenant}, f"tenant {tenant['id']}: {tenant['status']}, plan {tenant['plan']}")
    return 0


def cmd_tenant_tier(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)

    async def work(db: Database) -> dict[str, Any]:
        found = await tiers.describe(db, settings, tenant_id)
        return {**found, "plan_move": await tier_moves.pending(db, settings, tenant_id)}

    found = asyncio.run(with_db(settings, work))
    moving = f", moving since {found['moving_since']}" if found["moving_since"] else ""
    planned = found["plan_move"]
    if planned:
        moving += f"; its plan's move to {planned['tier']} is {planned['state']}"
        if planned["last_error"]:
            moving += f" after {planned['attempts']} attempt(s), last: {planned['last_error']}"
    emit(args, found, f"tenant {tenant_id}: tier {found['tier']} (wanted: {found['wanted']}){moving}")
    return 0


def cmd_tenant_move(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)
    check_database_url(args.tier, args.database_url)

    async def work(db: Database) -> dict[str, Any]:
        before = await tiers.describe(db, settings, tenant_id)
        result = await tiers.move_tenant(db, settings, tenant_id, args.tier, database_url=args.database_url)
        async with db.system() as conn:
            after = await tiers.describe(db, settings, tenant_id)
            await record_change(db, conn, tenant_id, "tenant.move", tenant_id, before, after)
        return result

    result = asyncio.run(with_db(settings, work))
    human = (
        f"tenant {tenant_id}: moved {result['from']} -> {result['tier']},"
        f" {result['rows_copied']} rows copied and verified"
        if result["moved"]
        else f"tenant {tenant_id}: already on {result['tier']}"
    )
    emit(args, result, human)
    return 0


def cmd_tenant_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)

    async def work(db: Database) -> dict[str, Any]:
        return await tiers.cleanup_tenant(db, settings, tenant_id)

    result = asyncio.run(with_db(settings, work))
    cleaned = result["cleaned"]
    emit(
        args,
        result,
        f"tenant {tenant_id}: " + (f"the old {cleaned} copy deleted" if cleaned else "nothing to clean up"),
    )
    return 0


def cmd_key_create(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)

    async def work(db: Database) -> dict[str, Any]:
        async with db.system() as conn:
            tenant = await tenant_service.get_tenant(conn, tenant_id)
            if tenant.status == TenantStatus.DEPROVISIONED:
                raise TenantryError("a deprovisioned tenant cannot get new keys", code="tenant_deprovisioned")
            info, secret = await api_keys.create_key(
                conn, tenant_id, args.name, subject=args.subject, roles=_roles(args.role), tools=_tools(args.tool)
            )
            await record_change(db, conn, tenant_id, "key.create", info.id, None, info.public())
        return {**info.public(), "secret": secret}

    key = asyncio.run(with_db(settings, work))
    emit(args, {"key": key}, f"key {key['id']} for tenant {tenant_id}\nAPI key (shown once): {key['secret']}")
    return 0


def _roles(roles: list[str]) -> list[str]:
    for role in roles:
        if not ROLE.fullmatch(role):
            raise TenantryError(
                f"role {role[:64]!r} is not a role name (letters, digits, _.:-)", code="invalid_request"
            )
    return roles


def _tools(tools: list[str] | None) -> list[str] | None:
    for tool in tools or ():
        if not TOOL.fullmatch(tool):
            detail = f"tool pattern {tool[:64]!r} is not a tool name or glob (letters, digits, _.:-*?)"
            raise TenantryError(detail, code="invalid_request")
    return tools


def cmd_key_list(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)

    async def work(db: Database) -> list[dict[str, Any]]:
        async with db.system() as conn:
            await tenant_service.get_tenant(conn, tenant_id)
            return [k.public() for k in await api_keys.list_keys(conn, tenant_id)]

    keys = asyncio.run(with_db(settings, work))
    human = "\n".join(
        f"{k['id']}  {k['prefix']}…  {'revoked ' + k['revoked_at'] if k['revoked_at'] else 'active':<40} {k['name']}"
        for k in keys
    )
    emit(args, {"keys": keys}, human or "no keys")
    return 0


def cmd_key_revoke(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id, key_id = parse_tenant_id(args.tenant), uuid.UUID(args.key_id)

    async def work(db: Database) -> dict[str, Any]:
        async with db.system() as conn:
            before = next((k.public() for k in await api_keys.list_keys(conn, tenant_id) if k.id == key_id), None)
            revoked = (await api_keys.revoke_key(conn, tenant_id, key_id)).public()
            await record_change(db, conn, tenant_id, "key.revoke", key_id, before, revoked)
            return revoked

    key = asyncio.run(with_db(settings, work))
    emit(args, {"key": key}, f"key {key['id']} revoked at {key['revoked_at']}")
    return 0


def cmd_key_set(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id, key_id = parse_tenant_id(args.tenant), uuid.UUID(args.key_id)
    roles = [] if args.no_roles else (_roles(args.role) if args.role is not None else None)
    tools = None if args.any_tool else (_tools(args.tool) if args.tool is not None else api_keys.UNCHANGED)

    async def work(db: Database) -> dict[str, Any]:
        async with db.system() as conn:
            await tenant_service.get_tenant(conn, tenant_id)
            before = next((k.public() for k in await api_keys.list_keys(conn, tenant_id) if k.id == key_id), None)
            changed = (await api_keys.update_key(conn, tenant_id, key_id, roles=roles, tools=tools)).public()
            await record_change(db, conn, tenant_id, "key.update", key_id, before, changed)
            return changed

    key = asyncio.run(with_db(settings, work))
    scope = ", ".join(key["tools"]) if key["tools"] else "any tool"
    emit(args, {"key": key}, f"key {key['id']}: roles {', '.join(key['roles']) or 'none'}; may call {scope}")
    return 0
