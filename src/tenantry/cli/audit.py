"""`tenantry audit list|export|verify|digest`: a tenant's audit trail from the command line.

The same reads the admin API makes (`audit/store.py`), straight from the database. `verify` exits 1
when the chain is broken and names the first broken link; `digest` says whether arguments are those a
record's `args_digest` was made from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tenantry.audit import store
from tenantry.audit.records import SYSTEM_TENANT, ArgumentDigests
from tenantry.cli.common import emit, with_db
from tenantry.db.engine import Database
from tenantry.errors import BadRequest, NotFound
from tenantry.settings import Settings
from tenantry.tenancy import parse_tenant_id

_DECISIONS = ("admitted", "refused")


async def _existing(db: Database, args: argparse.Namespace) -> Any:
    tenant_id = parse_tenant_id(args.tenant)
    if not await store.known(db, tenant_id):
        raise NotFound(f"no tenant {tenant_id} and no audit trail of one", code="tenant_not_found")
    return tenant_id


def _filter(args: argparse.Namespace) -> store.AuditFilter:
    return store.AuditFilter(
        since=store.parse_time(args.since, "--since"),
        until=store.parse_time(args.until, "--until"),
        subject=args.subject,
        tool=args.tool,
        decision=args.decision,
        outcome=args.outcome,
    )


def cmd_audit_list(args: argparse.Namespace, settings: Settings) -> int:
    where = _filter(args)

    async def work(db: Database) -> tuple[list[dict[str, Any]], str | None]:
        tenant_id = await _existing(db, args)
        return await store.page(db, tenant_id, where, limit=args.limit, cursor=args.cursor)

    found, cursor = asyncio.run(with_db(settings, work))
    lines = [
        f"{r['at']}  #{r['seq']:<7} {r['decision']:<8} {r['outcome']:<22} {r['method']:<28} "
        f"{r['tool'] or '-':<24} {r['subject'] or '-'}"
        for r in found
    ]
    if cursor:
        lines.append(f"(more: --cursor {cursor})")
    emit(args, {"records": found, "next_cursor": cursor}, "\n".join(lines) or "no records")
    return 0


def cmd_audit_export(args: argparse.Namespace, settings: Settings) -> int:
    where = _filter(args)

    async def work(db: Database, out: TextIO) -> None:
        tenant_id = await _existing(db, args)
        async for chunk in store.export(db, tenant_id, where, args.format):
            out.write(chunk)

    with contextlib.ExitStack() as stack:
        out = sys.stdout if args.output == "-" else stack.enter_context(open_output(args.output))
        asyncio.run(with_db(settings, lambda db: work(db, out)))
    return 0


def open_output(path: str) -> TextIO:
    try:
        return Path(path).open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise BadRequest(f"cannot write {path}: {exc.strerror}", code="invalid_request") from None


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    async def work(db: Database) -> store.Verification:
        return await store.verify(db, await _existing(db, args))

    result = asyncio.run(with_db(settings, work))
    if result.broken is None:
        human = (
            f"tenant {result.tenant_id}: intact, {result.checked} record(s) from seq {result.first_seq}"
            f" to {result.head_seq}; head hash {result.head_hash}"
        )
    else:
        b = result.broken
        human = f"tenant {result.tenant_id}: BROKEN at seq {b['seq']} (record {b['id']}, {b['at']}): {b['problem']}"
    emit(args, result.public(), human)
    return 0 if result.intact else 1


def cmd_audit_digest(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)
    try:
        arguments = json.loads(args.arguments)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"--arguments is not valid JSON: {exc}", code="invalid_arguments") from None
    digests = ArgumentDigests(settings.secret_keys)
    if args.digest is None:
        digest = digests.digest(tenant_id, arguments)
        emit(args, {"digest": digest}, digest)
        return 0
    same = digests.matches(tenant_id, arguments, args.digest)
    emit(args, {"matches": same}, "match" if same else "no match")
    return 0 if same else 1


def add_commands(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    group = sub.add_parser("audit", help="Read, export and verify a tenant's audit trail.").add_subparsers(
        dest="audit_command", required=True
    )

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tenant", required=True, help=f"tenant id ({SYSTEM_TENANT}: the system trail)")
        p.add_argument("--since", help="ISO 8601 time, inclusive (no zone: UTC)")
        p.add_argument("--until", help="ISO 8601 time, exclusive")
        p.add_argument("--subject", help="only this subject's records")
        p.add_argument("--tool", help="only calls of this tool")
        p.add_argument("--decision", choices=_DECISIONS, help="only admitted or only refused")
        p.add_argument("--outcome", help="only this outcome (ok, or an error code)")

    p = command("list", "A page of records, newest first.", cmd_audit_list, group)
    filters(p)
    p.add_argument("--limit", type=int, default=50, help=f"records per page (1-{store.PAGE_MAX}; default 50)")
    p.add_argument("--cursor", help="the cursor a previous page printed")
    p = command("export", "Every matching record, oldest first, as JSON Lines or CSV.", cmd_audit_export, group)
    filters(p)
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="JSON Lines (default) or CSV")
    p.add_argument("--output", default="-", help="file to write (default: standard output)")
    p = command(
        "verify", "Check a tenant's hash chain; exit 1 and name the first broken link.", cmd_audit_verify, group
    )
    p.add_argument("--tenant", required=True, help="tenant id")
    p = command("digest", "A call's argument digest, or whether arguments match one.", cmd_audit_digest, group)
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--arguments", required=True, help="the call's arguments as JSON")
    p.add_argument("--digest", help="an args_digest from a record: exit 0 if the arguments match it, 1 if not")
