"""`tenantry`: thin commands over the same functions the REST API uses.

    common.py   output, exit codes, a database for one command
    serve.py    serve, migrate, dev, balance
    tenants.py  tenant ..., key ...
    calls.py    call, probe (an MCP client)
    governance.py  policy ..., kill ...
    audit.py    audit list|export|verify|digest
    reports.py  report

Upstream and billing commands live with their packages (`federation/cli.py`, `billing/cli.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from tenantry.cli import audit as audit_cli
from tenantry.cli import governance as governance_cli
from tenantry.cli import reports as reports_cli
from tenantry.cli.calls import cmd_call, cmd_probe
from tenantry.cli.common import EXIT_AUTH, EXIT_CODES, EXIT_UNAVAILABLE, EXIT_USAGE
from tenantry.cli.serve import _demo_tenant, cmd_balance, cmd_dev, cmd_migrate, cmd_serve
from tenantry.cli.tenants import (
    cmd_key_create,
    cmd_key_list,
    cmd_key_revoke,
    cmd_key_set,
    cmd_tenant_cleanup,
    cmd_tenant_create,
    cmd_tenant_list,
    cmd_tenant_move,
    cmd_tenant_set,
    cmd_tenant_tier,
)
from tenantry.client import GatewayError
from tenantry.db.router import TIERS
from tenantry.errors import TenantryError
from tenantry.federation import cli as upstream_cli
from tenantry.settings import Settings
from tenantry.tenancy import TenantStatus

__all__ = ["_demo_tenant", "build_parser", "main"]

# --- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tenantry", description="Tenantry: a multi-tenant MCP gateway.", epilog=EXIT_CODES
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, fn: Callable[..., int], parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(fn=fn)
        return p

    for name, fn, text in (
        ("serve", cmd_serve, "Serve the gateway (settings from TENANTRY_* environment variables)."),
        ("dev", cmd_dev, "Start PostgreSQL/Redis if needed, migrate, create a demo tenant and key, and serve."),
    ):
        p = command(name, text, fn)
        p.add_argument("--host", help="address to bind (default: TENANTRY_HOST)")
        p.add_argument("--port", type=int, help="port to bind (default: TENANTRY_PORT)")
        p.add_argument(
            "--log-level", choices=["debug", "info", "warning", "error"], help="default: TENANTRY_LOG_LEVEL (info)"
        )
        p.add_argument("--tls-certfile", help="PEM certificate (chain) to serve HTTPS with (TENANTRY_TLS_CERTFILE)")
        p.add_argument("--tls-keyfile", help="PEM private key, when not in the certificate file (TENANTRY_TLS_KEYFILE)")
        p.add_argument(
            "--tls-groups", help="key-exchange groups, preferred first: X25519MLKEM768:X25519 (TENANTRY_TLS_GROUPS)"
        )
        if name == "dev":
            p.add_argument("--state-dir", default=".tenantry", help="where embedded services keep their data")

    p = command(
        "balance",
        "Balance a port over several gateway replicas, round robin per connection (for trying replicas on one "
        "machine; in production use the balancer you have).",
        cmd_balance,
    )
    p.add_argument("--listen", default="127.0.0.1:8000", help="host:port to listen on (default 127.0.0.1:8000)")
    p.add_argument(
        "--backend", action="append", required=True, help="a replica's host:port, e.g. 127.0.0.1:8001 (repeatable)"
    )
    p.add_argument(
        "--retry-after", type=float, default=2.0, help="seconds a replica that refused a connection is skipped (2)"
    )

    p = command(
        "migrate",
        "Create the database if missing and apply migrations: the shared tables, then every schema- and"
        " database-tier tenant's tables (a failed tenant is reported, the others go on; run again to retry).",
        cmd_migrate,
    )
    p.add_argument("--downgrade", metavar="REVISION", help="roll back the shared tables to REVISION (e.g. 'base')")
    p.add_argument("--tenant", help="migrate only this tenant's schema or database (not the shared tables)")

    tenant = sub.add_parser("tenant", help="Create, list and change tenants.").add_subparsers(
        dest="tenant_command", required=True
    )
    p = command("create", "Create a tenant.", cmd_tenant_create, tenant)
    p.add_argument("--name", required=True, help="the tenant's display name (1-200 characters)")
    p.add_argument("--plan", help="plan name (default: TENANTRY_DEFAULT_PLAN)")
    p.add_argument("--with-key", action="store_true", help="also create its first API key")
    p.add_argument("--tier", choices=list(TIERS), help="isolation tier (default: the plan's, TENANTRY_PLAN_TIERS)")
    p.add_argument("--database-url", help="database tier only: the tenant's database on another server")
    p = command("list", "List tenants.", cmd_tenant_list, tenant)
    p.add_argument("--status", choices=[s.value for s in TenantStatus], help="only tenants with this status")
    p = command("set", "Change a tenant's plan or status.", cmd_tenant_set, tenant)
    p.add_argument("tenant", help="tenant id")
    p.add_argument("--plan", help="the new plan (one of TENANTRY_PLAN_LIMITS)")
    p.add_argument("--status", choices=["active", "suspended"], help="suspend the tenant, or make it active again")
    p.add_argument("--limits", help="""overrides of the plan's limits as JSON, e.g. '{"calls_per_window": 5000}'""")
    p.add_argument("--tier", choices=list(TIERS), help="the tier it should be on (`tenant move` puts it there)")
    p = command(
        "tier",
        "Show where a tenant's data is (its isolation tier) and what its plan asks for.",
        cmd_tenant_tier,
        tenant,
    )
    p.add_argument("tenant", help="tenant id")
    p = command(
        "move",
        "Move a tenant's data to another isolation tier: provision, copy, verify, switch (the old copy is kept"
        " until `tenant cleanup`). Its calls get a retryable error while it runs.",
        cmd_tenant_move,
        tenant,
    )
    p.add_argument("tenant", help="tenant id")
    p.add_argument("--tier", required=True, choices=list(TIERS), help="the tier to move to")
    p.add_argument("--database-url", help="database tier only: the tenant's database on another server")
    p = command("cleanup", "Delete the copy of a tenant's data its last move left behind.", cmd_tenant_cleanup, tenant)
    p.add_argument("tenant", help="tenant id")

    key = sub.add_parser("key", help="Create, list, change and revoke tenant API keys.").add_subparsers(
        dest="key_command", required=True
    )
    p = command("create", "Create an API key for a tenant (the secret is printed once).", cmd_key_create, key)
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--name", default="default", help="a label for the key (default: default)")
    p.add_argument("--subject", help="who the key speaks for (default: its name)")
    p.add_argument("--role", action="append", default=[], help="a role the key holds (repeatable)")
    p.add_argument("--tool", action="append", help="a tool (glob) the key may call; repeatable; omit: any")
    p = command("list", "List a tenant's API keys (prefixes only; secrets are never stored).", cmd_key_list, key)
    p.add_argument("--tenant", required=True, help="tenant id")
    p = command("revoke", "Revoke an API key.", cmd_key_revoke, key)
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("key_id", help="the key's id (from `tenantry key list`)")
    p = command(
        "set", "Change a key's roles or the tools it may call (its next call, on every replica).", cmd_key_set, key
    )
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("key_id", help="the key's id (from `tenantry key list`)")
    p.add_argument("--role", action="append", help="a role the key holds from now on (repeatable; omit: unchanged)")
    p.add_argument("--no-roles", action="store_true", help="the key holds no role from now on")
    p.add_argument(
        "--tool", action="append", help="a tool (glob) the key may call from now on (repeatable; omit: unchanged)"
    )
    p.add_argument("--any-tool", action="store_true", help="the key may call any tool from now on")

    p = command("call", "Call a tool through the gateway as an MCP client (no TOOL: list the tools).", cmd_call)
    p.add_argument("tool", nargs="?", help="tool name; omit to list tools")
    p.add_argument("--args", default="{}", help="tool arguments as a JSON object")
    p.add_argument("--url", help="gateway MCP URL (default: http://TENANTRY_HOST:TENANTRY_PORT/mcp)")
    p.add_argument("--tenant", help="tenant id (sent as Tenant-ID)")
    p.add_argument("--key", required=True, help="API key or tenant token (sent as Bearer)")
    p.add_argument(
        "--transport", choices=["http", "sse"], default="http", help="streamable HTTP (default) or legacy SSE"
    )

    p = command(
        "probe",
        "Check a gateway as a tenant's agent would: connect, list tools, optionally call one; timed. "
        "Exit 0 ok, 1 degraded (the call failed), 2 down.",
        cmd_probe,
    )
    p.add_argument("url", help="the gateway's MCP endpoint, e.g. https://gateway.example/mcp")
    p.add_argument("--tenant", help="tenant id (sent as Tenant-ID; an API key names its tenant itself)")
    p.add_argument("--key", required=True, help="API key or tenant token (sent as Bearer)")
    p.add_argument("--tool", help="a canary tool to call, e.g. health_check (default: none)")
    p.add_argument("--args", default="{}", help="the canary's arguments as a JSON object")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for the whole probe (default 10)")

    from tenantry.billing.cli import add_commands as add_billing_commands

    add_billing_commands(sub, command)

    upstream_cli.add_commands(sub, command)
    governance_cli.add_commands(sub, command)
    audit_cli.add_commands(sub, command)
    reports_cli.add_commands(sub, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    as_json = getattr(args, "json", False)

    def fail(code: str, detail: str, exit_code: int) -> int:
        print(json.dumps({"error": code, "detail": detail}) if as_json else f"error: {detail}", file=sys.stderr)
        return exit_code

    try:
        settings = Settings()
        code: int = args.fn(args, settings)
    except TenantryError as exc:
        return fail(exc.code, f"{exc.code}: {exc.detail}", EXIT_UNAVAILABLE if exc.http_status >= 500 else EXIT_USAGE)
    except GatewayError as exc:
        return fail(exc.kind, str(exc), {"usage": EXIT_USAGE, "auth": EXIT_AUTH}.get(exc.kind, EXIT_UNAVAILABLE))
    except ValidationError as exc:  # the settings: say which and why, never the value (it may be a secret)
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        return fail("invalid_settings", f"invalid settings: {problems}", EXIT_USAGE)
    except ValueError as exc:
        return fail("invalid_request", str(exc), EXIT_USAGE)
    except (DBAPIError, OSError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return fail("database_unavailable", f"the database did not answer: {reason}", EXIT_UNAVAILABLE)
    return code
