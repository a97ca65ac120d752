"""`tenantry`: thin commands over the same functions the REST API uses."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tenantry import tenants as tenant_service
from tenantry.auth import api_keys
from tenantry.db.engine import Database
from tenantry.db.migrate import ensure_database, migrate
from tenantry.errors import BadRequest, TenantryError
from tenantry.federation import cli as upstream_cli
from tenantry.observability import configure_logging
from tenantry.plans import validate_overrides
from tenantry.settings import Settings
from tenantry.tenancy import TenantStatus, parse_tenant_id

DEMO_TENANT_NAME = "demo"


def _emit(args: argparse.Namespace, data: dict[str, Any], human: str) -> None:
    print(json.dumps(data, indent=2) if args.json else human)


async def _with_system_db(settings: Settings, work: Callable[[Database], Awaitable[Any]]) -> Any:
    db = Database(settings)
    try:
        return await work(db)
    finally:
        await db.dispose()


# --- serve / migrate / dev -------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from tenantry.app import create_app

    level = args.log_level or settings.log_level
    configure_logging(json_lines=settings.json_logs, level=level)
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_config=None,  # our handler and format (configure_logging), one line per request from the app
        log_level=level,
        access_log=False,
    )
    return 0


async def _migrate(settings: Settings, downgrade_to: str | None) -> None:
    await ensure_database(settings.owner_database_url)
    await migrate(
        settings.owner_database_url,
        app_role=settings.db_app_role,
        app_password=settings.db_app_password,
        revision=downgrade_to or "head",
        downgrade=downgrade_to is not None,
    )


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    asyncio.run(_migrate(settings, args.downgrade))
    _emit(args, {"migrated": args.downgrade or "head"}, f"database at {args.downgrade or 'head'}")
    return 0


async def _demo_tenant(settings: Settings) -> tuple[tenant_service.Tenant, str]:
    async def work(db: Database) -> tuple[tenant_service.Tenant, str]:
        async with db.system() as conn:
            existing = [
                t for t in await tenant_service.list_tenants(conn, status="active") if t.name == DEMO_TENANT_NAME
            ]
            tenant = existing[0] if existing else await tenant_service.create_tenant(conn, DEMO_TENANT_NAME, "pro")
            _, secret = await api_keys.create_key(conn, tenant.id, "dev")
        return tenant, secret

    result: tuple[tenant_service.Tenant, str] = await _with_system_db(settings, work)
    return result


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    """Bring up PostgreSQL and Redis if nothing answers, migrate, make a demo tenant, serve."""
    # Development tooling, never imported by the gateway itself (its embedded servers are the `dev` extra).
    from tenantry.dev import DevServiceError, ensure_postgres, ensure_redis

    state = Path(args.state_dir)
    try:
        print(f"postgres: {ensure_postgres(settings.database_url, state)}")
        print(f"redis:    {ensure_redis(settings.redis_url, state)}")
    except DevServiceError as exc:
        raise TenantryError(str(exc), code="dev_services_unavailable") from None
    asyncio.run(_migrate(settings, None))
    tenant, secret = asyncio.run(_demo_tenant(settings))
    host, port = args.host or settings.host, args.port or settings.port
    base = f"http://{host}:{port}"
    print(
        f"""
Tenantry is starting on {base}

  demo tenant id : {tenant.id}
  demo API key   : {secret}   (shown once; make more with `tenantry key create`)

Call a tool through the gateway (in another shell, with the venv active):

  tenantry call --url {base}/mcp --tenant {tenant.id} --key {secret} \\
      data_put --args '{{"key": "greeting", "value": {{"hello": "world"}}}}'
  tenantry call --url {base}/mcp --tenant {tenant.id} --key {secret} data_get --args '{{"key": "greeting"}}'

or with curl (stateless MCP over streamable HTTP):

  curl -s {base}/mcp -H 'Tenant-ID: {tenant.id}' -H 'Authorization: Bearer {secret}' \\
      -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\
      -d '{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"health_check","arguments":{{}}}}}}'
""",
        flush=True,
    )
    return cmd_serve(args, settings)


# --- tenants and keys ------------------------------------------------------------------------------


def cmd_tenant_create(args: argparse.Namespace, settings: Settings) -> int:
    plan = args.plan or settings.default_plan
    if plan not in settings.plans:
        raise TenantryError(f"unknown plan {plan!r}; plans are {settings.plans}", code="invalid_plan")

    async def work(db: Database) -> dict[str, Any]:
        async with db.system() as conn:
            tenant = await tenant_service.create_tenant(conn, args.name, plan)
            out: dict[str, Any] = {"tenant": tenant.public()}
            if args.with_key:
                info, secret = await api_keys.create_key(conn, tenant.id, "default")
                out["key"] = {**info.public(), "secret": secret}
        return out

    out = asyncio.run(_with_system_db(settings, work))
    human = f"tenant {out['tenant']['id']} ({args.name}, plan {plan})"
    if "key" in out:
        human += f"\nAPI key (shown once): {out['key']['secret']}"
    _emit(args, out, human)
    return 0


def cmd_tenant_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(db: Database) -> list[dict[str, Any]]:
        async with db.system() as conn:
            return [t.public() for t in await tenant_service.list_tenants(conn, status=args.status, limit=1000)]

    found = asyncio.run(_with_system_db(settings, work))
    _emit(
        args, {"tenants": found}, "\n".join(f"{t['id']}  {t['status']:<13} {t['plan']:<10} {t['name']}" for t in found)
    )
    return 0


def _json_object(raw: str, what: str, code: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}", code=code) from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object", code=code)
    return value


def cmd_tenant_set(args: argparse.Namespace, settings: Settings) -> int:
    if args.plan is not None and args.plan not in settings.plans:
        raise TenantryError(f"unknown plan {args.plan!r}; plans are {settings.plans}", code="invalid_plan")
    tenant_id = parse_tenant_id(args.tenant)
    limits = None
    if args.limits is not None:
        limits = validate_overrides(_json_object(args.limits, "--limits", "invalid_limits"))

    async def work(db: Database) -> dict[str, Any]:
        async with db.system() as conn:
            status = TenantStatus(args.status) if args.status else None
            tenant = await tenant_service.update_tenant(conn, tenant_id, plan=args.plan, status=status, limits=limits)
            return tenant.public()

    tenant = asyncio.run(_with_system_db(settings, work))
    _emit(args, {"tenant": tenant}, f"tenant {tenant['id']}: {tenant['status']}, plan {tenant['plan']}")
    return 0


def cmd_key_create(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)

    async def work(db: Database) -> dict[str, Any]:
        async with db.system() as conn:
            tenant = await tenant_service.get_tenant(conn, tenant_id)
            if tenant.status == TenantStatus.DEPROVISIONED:
                raise TenantryError("a deprovisioned tenant cannot get new keys", code="tenant_deprovisioned")
            info, secret = await api_keys.create_key(conn, tenant_id, args.name)
        return {**info.public(), "secret": secret}

    key = asyncio.run(_with_system_db(settings, work))
    _emit(args, {"key": key}, f"key {key['id']} for tenant {tenant_id}\nAPI key (shown once): {key['secret']}")
    return 0


def cmd_key_revoke(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id, key_id = parse_tenant_id(args.tenant), uuid.UUID(args.key_id)

    async def work(db: Database) -> dict[str, Any]:
        async with db.system() as conn:
            return (await api_keys.revoke_key(conn, tenant_id, key_id)).public()

    key = asyncio.run(_with_system_db(settings, work))
    _emit(args, {"key": key}, f"key {key['id']} revoked at {key['revoked_at']}")
    return 0


# --- call ------------------------------------------------------------------------------------------


def cmd_call(args: argparse.Namespace, settings: Settings) -> int:
    from tenantry.client import call_tool, list_tools

    headers = {"Authorization": f"Bearer {args.key}"}
    if args.tenant:
        headers["Tenant-ID"] = args.tenant
    url = args.url or f"http://{settings.host}:{settings.port}/{'sse' if args.transport == 'sse' else 'mcp'}"
    if args.tool is None:
        tools = asyncio.run(list_tools(url, headers, args.transport))
        _emit(args, {"tools": tools}, "\n".join(f"{t['name']:<14} {t.get('description', '')}" for t in tools))
        return 0
    arguments = _json_object(args.args, "--args", "invalid_arguments")
    result = asyncio.run(call_tool(url, headers, args.transport, args.tool, arguments))
    text = "\n".join(c.get("text", json.dumps(c)) for c in result.get("content", []))
    _emit(args, result, text)
    return 1 if result.get("isError") else 0


# --- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenantry", description="Tenantry: a multi-tenant MCP gateway.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, fn: Callable[..., int], parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
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
        if name == "dev":
            p.add_argument("--state-dir", default=".tenantry", help="where embedded services keep their data")

    p = command("migrate", "Create the database if missing and apply migrations.", cmd_migrate)
    p.add_argument("--downgrade", metavar="REVISION", help="roll back to REVISION (e.g. 'base') instead")

    tenant = sub.add_parser("tenant", help="Create, list and change tenants.").add_subparsers(
        dest="tenant_command", required=True
    )
    p = command("create", "Create a tenant.", cmd_tenant_create, tenant)
    p.add_argument("--name", required=True)
    p.add_argument("--plan", help="plan name (default: TENANTRY_DEFAULT_PLAN)")
    p.add_argument("--with-key", action="store_true", help="also create its first API key")
    p = command("list", "List tenants.", cmd_tenant_list, tenant)
    p.add_argument("--status", choices=[s.value for s in TenantStatus])
    p = command("set", "Change a tenant's plan or status.", cmd_tenant_set, tenant)
    p.add_argument("tenant", help="tenant id")
    p.add_argument("--plan")
    p.add_argument("--status", choices=["active", "suspended"])
    p.add_argument("--limits", help="""overrides of the plan's limits as JSON, e.g. '{"calls_per_window": 5000}'""")

    key = sub.add_parser("key", help="Create and revoke tenant API keys.").add_subparsers(
        dest="key_command", required=True
    )
    p = command("create", "Create an API key for a tenant (the secret is printed once).", cmd_key_create, key)
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--name", default="default")
    p = command("revoke", "Revoke an API key.", cmd_key_revoke, key)
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("key_id")

    p = command("call", "Call a tool through the gateway as an MCP client (no TOOL: list the tools).", cmd_call)
    p.add_argument("tool", nargs="?", help="tool name; omit to list tools")
    p.add_argument("--args", default="{}", help="tool arguments as a JSON object")
    p.add_argument("--url", help="gateway MCP URL (default: http://TENANTRY_HOST:TENANTRY_PORT/mcp)")
    p.add_argument("--tenant", help="tenant id (sent as Tenant-ID)")
    p.add_argument("--key", required=True, help="API key or tenant token (sent as Bearer)")
    p.add_argument("--transport", choices=["http", "sse"], default="http")

    from tenantry.billing.cli import add_commands as add_billing_commands

    add_billing_commands(sub, command)

    upstream_cli.add_commands(sub, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
        code: int = args.fn(args, settings)
    except TenantryError as exc:
        print(
            json.dumps(exc.body()) if getattr(args, "json", False) else f"error: {exc.code}: {exc.detail}",
            file=sys.stderr,
        )
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
