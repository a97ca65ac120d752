"""`tenantry billing ...`: the reporter and the reconciliation, from a shell."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

from tenantry.billing.dunning import enforce_past_due
from tenantry.billing.reconcile import reconcile
from tenantry.billing.reporter import Reporter, unpark_tenant, utcnow
from tenantry.billing.stripe_client import StripeBilling
from tenantry.db.engine import Database
from tenantry.errors import TenantryError
from tenantry.settings import Settings
from tenantry.tenancy import parse_tenant_id


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.billing_enabled:
        raise TenantryError("set TENANTRY_STRIPE_API_KEY to report usage to Stripe", code="billing_disabled")
    tenants = [parse_tenant_id(t) for t in args.tenant] or None

    async def work() -> dict[str, Any]:
        db = Database(settings)
        reporter = Reporter(settings, db, StripeBilling(settings))
        try:
            if not args.once:
                await reporter.run()
                return {}
            run = await reporter.run_once(tenants)
            async with db.system() as conn:
                changed = await enforce_past_due(conn, settings, utcnow())
            return {**run.public(), "past_due_enforced": [str(t) for t in changed]}
        finally:
            await db.dispose()

    out = asyncio.run(work())
    if not out.get("ran", True):
        human = "another reporter holds the lock; nothing done"
    else:
        human = (
            f"reports created {out.get('reports_created', 0)}, sent {out.get('sent', 0)} "
            f"({out.get('units_sent', 0)} units), deferred {out.get('deferred', 0)}, parked {out.get('parked', 0)}"
        )
        human += "".join(f"\n  error: {e}" for e in out.get("errors", []))
    print(json.dumps(out, indent=2) if args.json else human)
    return 1 if out.get("deferred") or out.get("parked") else 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    tenant = parse_tenant_id(args.tenant) if args.tenant else None

    async def work() -> list[dict[str, Any]]:
        db = Database(settings)
        try:
            async with db.system() as conn:
                return await reconcile(conn, tenant)
        finally:
            await db.dispose()

    rows = asyncio.run(work())
    differences = [r for r in rows if r["difference"]]
    if args.json:
        print(json.dumps({"periods": rows, "differences": len(differences)}, indent=2))
        return 0
    print(
        f"{'tenant':<36}  {'period':<7}  {'ledger':>8} {'reported':>8} {'pending':>8} {'parked':>8} {'unrep.':>8}  diff"
    )
    for r in rows:
        flag = "" if r["billable"] else "  (no Stripe customer: not reported)"
        print(
            f"{r['tenant_id']:<36}  {r['period']:<7}  {r['ledger_units']:>8} {r['reported_units']:>8} "
            f"{r['pending_units']:>8} {r['parked_units']:>8} {r['unreported_units']:>8}  {r['difference']}{flag}"
        )
    print(f"{len(differences)} period(s) with a difference between the ledger and Stripe")
    return 0


def cmd_unpark(args: argparse.Namespace, settings: Settings) -> int:
    tenant = parse_tenant_id(args.tenant)

    async def work() -> int:
        db = Database(settings)
        try:
            async with db.system() as conn:
                return await unpark_tenant(conn, tenant, utcnow())
        finally:
            await db.dispose()

    count = asyncio.run(work())
    print(json.dumps({"unparked": count}) if args.json else f"{count} parked report(s) will be retried")
    return 0


def add_commands(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    billing = sub.add_parser("billing", help="Report usage to Stripe and reconcile it.").add_subparsers(
        dest="billing_command", required=True
    )
    p = command("report", "Report unreported usage to Stripe (one cycle with --once).", cmd_report, billing)
    p.add_argument("--once", action="store_true", help="run one cycle and exit (default: run until stopped)")
    p.add_argument("--tenant", action="append", default=[], help="only this tenant (repeatable)")
    p = command(
        "reconcile", "Ledger vs reported units per tenant and month, with any difference.", cmd_reconcile, billing
    )
    p.add_argument("--tenant", help="only this tenant")
    p = command("unpark", "Retry a tenant's parked reports (after fixing its Stripe customer).", cmd_unpark, billing)
    p.add_argument("tenant", help="tenant id")
