"""`tenantry policy ...` and `tenantry kill ...`: the same service calls the admin API makes.

A change made here is announced by the database (`tenantry_tenant_changes`, `tenantry_kills`): every
running gateway applies it within about a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tenantry import tenants as tenant_service
from tenantry.audit.changes import record_change
from tenantry.auth import api_keys
from tenantry.cli.common import emit, json_object, with_db
from tenantry.db.engine import Database
from tenantry.errors import BadRequest, NotFound
from tenantry.governance import kills, store
from tenantry.governance.kills import SCOPES
from tenantry.governance.policy import dry_run
from tenantry.settings import Settings
from tenantry.tenancy import parse_tenant_id


def _document(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8") if path != "-" else input()
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}", code="invalid_policy") from None
    return json_object(text, path, "invalid_policy")


def cmd_policy_get(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)

    async def work(db: Database) -> store.StoredPolicy | None:
        async with db.system() as conn:
            await tenant_service.get_tenant(conn, tenant_id)
            return await store.get_policy(conn, tenant_id)

    stored = asyncio.run(with_db(settings, work))
    if stored is None:
        raise NotFound(f"tenant {tenant_id} has no policy: every tool, any arguments", code="policy_not_found")
    emit(args, stored.public(), json.dumps(stored.document, indent=2) + f"\n(version {stored.version})")
    return 0


def cmd_policy_set(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id, document = parse_tenant_id(args.tenant), _document(args.file)

    async def work(db: Database) -> store.StoredPolicy:
        async with db.system() as conn:
            await tenant_service.get_tenant(conn, tenant_id)
            before = await store.get_policy(conn, tenant_id)
            stored = await store.put_policy(conn, tenant_id, document, expected_version=args.expected_version)
            await record_change(
                db, conn, tenant_id, "policy.put", tenant_id, before.public() if before else None, stored.public()
            )
            return stored

    stored = asyncio.run(with_db(settings, work))
    emit(args, stored.public(), f"policy of tenant {tenant_id}: version {stored.version}")
    return 0


def cmd_policy_delete(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)

    async def work(db: Database) -> None:
        async with db.system() as conn:
            await tenant_service.get_tenant(conn, tenant_id)
            before = await store.get_policy(conn, tenant_id)
            await store.delete_policy(conn, tenant_id)
            await record_change(
                db, conn, tenant_id, "policy.delete", tenant_id, before.public() if before else None, None
            )

    asyncio.run(with_db(settings, work))
    emit(args, {"tenant_id": str(tenant_id), "policy": None}, f"tenant {tenant_id} has no policy now")
    return 0


def cmd_policy_check(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)
    arguments = json_object(args.args, "--args", "invalid_arguments")
    claims = json_object(args.claims, "--claims", "invalid_request")

    async def work(db: Database) -> Any:
        async with db.system() as conn:
            await tenant_service.get_tenant(conn, tenant_id)
            stored = await store.get_policy(conn, tenant_id)
        return stored.document if stored else None

    raw = _document(args.file) if args.file else asyncio.run(with_db(settings, work))
    roles = frozenset(args.role)
    answer = dry_run(
        raw, tenant_id, args.subject, roles, {str(k): str(v) for k, v in claims.items()}, args.tool, arguments
    )
    verdict = "allowed" if answer["allowed"] else f"refused ({answer['error']})"
    human = f"{args.subject} {sorted(roles)} -> {args.tool}: {verdict} by {answer['rule']}"
    if "arguments" in answer:
        human += f"\nthe tool would get: {json.dumps(answer['arguments'])}"
    elif "detail" in answer:
        human += f"\n{answer['detail']}"
    emit(args, answer, human)
    return 0 if answer["allowed"] else 1


def cmd_kill_create(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant) if args.tenant else None
    if tenant_id is None and args.scope != "tool":
        raise BadRequest(f"a {args.scope} kill names its --tenant", code="invalid_request")
    target = str(tenant_id) if args.scope == "tenant" else args.target
    if not target:
        raise BadRequest(f"a {args.scope} kill names its --target", code="invalid_request")

    async def work(db: Database) -> kills.Kill:
        async with db.system() as conn:
            if tenant_id is not None:
                await tenant_service.get_tenant(conn, tenant_id)
            keys = await api_keys.list_keys(conn, tenant_id) if tenant_id is not None else []
            if args.scope == "key" and target not in {str(k.id) for k in keys}:
                raise NotFound(f"no key {target[:64]} for tenant {tenant_id}", code="key_not_found")
            kill = await kills.create_kill(conn, tenant_id, args.scope, target, args.reason)
            await record_change(db, conn, tenant_id, "kill.create", kill.id, None, kill.public())
            return kill

    kill = asyncio.run(with_db(settings, work))
    emit(args, kill.public(), f"kill {kill.id}: {kill.scope} {kill.target} stopped")
    return 0


def cmd_kill_list(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant) if args.tenant else None

    async def work(db: Database) -> list[kills.Kill]:
        async with db.system() as conn:
            return await kills.list_kills(conn, live=not args.lifted, applies_to=tenant_id)

    found = asyncio.run(with_db(settings, work))
    human = "\n".join(
        f"{k.id}  {k.scope:<8} {k.target:<40} {'lifted' if k.lifted_at else 'live':<7} {k.reason}" for k in found
    )
    emit(args, {"kills": [k.public() for k in found]}, human or "no kills")
    return 0


def cmd_kill_lift(args: argparse.Namespace, settings: Settings) -> int:
    try:
        kill_id = uuid.UUID(args.kill_id)
    except ValueError:
        raise BadRequest(f"a kill id is a UUID, got {args.kill_id[:64]!r}", code="invalid_request") from None

    async def work(db: Database) -> kills.Kill:
        async with db.system() as conn:
            kill = await kills.lift_kill(conn, kill_id)
            await record_change(db, conn, kill.applies_to, "kill.lift", kill_id, None, kill.public())
            return kill

    kill = asyncio.run(with_db(settings, work))
    emit(args, kill.public(), f"kill {kill.id} lifted")
    return 0


def add_commands(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    policy = sub.add_parser("policy", help="Read, replace, delete and try a tenant's policy.").add_subparsers(
        dest="policy_command", required=True
    )
    p = command("get", "Print a tenant's policy document.", cmd_policy_get, policy)
    p.add_argument("--tenant", required=True, help="tenant id")
    p = command("set", "Replace a tenant's policy with a JSON document (validated first).", cmd_policy_set, policy)
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--file", required=True, help="the document (JSON); '-' reads one line from stdin")
    p.add_argument("--expected-version", type=int, help="refuse if the policy is no longer at this version")
    p = command("delete", "Remove a tenant's policy (every tool, any arguments again).", cmd_policy_delete, policy)
    p.add_argument("--tenant", required=True, help="tenant id")
    p = command(
        "check", "Dry-run: may SUBJECT call TOOL with these arguments? Exit 1 if not.", cmd_policy_check, policy
    )
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--subject", required=True, help="who calls")
    p.add_argument("--role", action="append", default=[], help="a role the caller holds (repeatable)")
    p.add_argument("--claims", default="{}", help="the caller's token claims as a JSON object")
    p.add_argument("--tool", required=True, help="the tool's full name")
    p.add_argument("--args", default="{}", help="the call's arguments as a JSON object")
    p.add_argument("--file", help="try this draft document instead of the stored policy")

    kill = sub.add_parser("kill", help="Stop a session, key, subject, tool or tenant; list and lift kills.")
    group = kill.add_subparsers(dest="kill_command", required=True)
    p = command(
        "create", "Stop new calls in a scope now, on every gateway, and cancel those in flight.", cmd_kill_create, group
    )
    p.add_argument("--scope", required=True, choices=SCOPES, help="what to stop")
    p.add_argument("--tenant", help="tenant id (omit only for a tool stopped for every tenant)")
    p.add_argument("--target", help="the session id, key id, subject or tool name (not for a tenant)")
    p.add_argument("--reason", default="", help="said to the stopped agents and kept with the kill")
    p = command("list", "List live kills (with --lifted, lifted ones too).", cmd_kill_list, group)
    p.add_argument("--tenant", help="only those applying to this tenant")
    p.add_argument("--lifted", action="store_true", help="include lifted kills")
    p = command("lift", "Lift a kill: what it stopped may call again.", cmd_kill_lift, group)
    p.add_argument("kill_id", help="the kill's id (from `tenantry kill list`)")
