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

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from tenantry import tenants as tenant_service
from tenantry.auth import api_keys
from tenantry.client import GatewayError, call_tool, list_tools, probe
from tenantry.db.engine import Database
from tenantry.db.migrate import ensure_database, migrate
from tenantry.errors import BadRequest, TenantryError, Unavailable
from tenantry.federation import cli as upstream_cli
from tenantry.observability import configure_logging
from tenantry.plans import validate_overrides
from tenantry.settings import Settings
from tenantry.tenancy import TenantStatus, parse_tenant_id

DEMO_TENANT_NAME = "demo"

# Exit codes, the same for every command (`tenantry --help` lists them).
EXIT_TOOL_ERROR = 1  # `call`: the tool answered with an error (`probe`: degraded)
EXIT_USAGE = 2  # the request was wrong: bad arguments, unknown tool or tenant, invalid JSON (`probe`: down)
EXIT_AUTH = 3  # the gateway refused the credential (401) or the tenant (403)
EXIT_UNAVAILABLE = 4  # the gateway or the database did not answer, or failed
EXIT_CODES = (
    "exit codes: 0 ok; 1 the tool answered with an error; 2 usage error (bad arguments, unknown tool or"
    " tenant); 3 credential or tenant refused (401/403); 4 gateway or database unreachable or failing."
    " `probe`: 0 ok, 1 degraded, 2 down."
)


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


async def _demo_tenant(
    settings: Settings, kept: tuple[uuid.UUID, uuid.UUID, str] | None
) -> tuple[tenant_service.Tenant, uuid.UUID, str, bool]:
    """The demo tenant and a working key for it: `kept` (the key the last run saved) when it still
    works, else a new one, and then the demo tenant's older dev keys are revoked, so runs do not pile
    up live keys. Returns (tenant, key id, secret, reused)."""

    async def work(db: Database) -> tuple[tenant_service.Tenant, uuid.UUID, str, bool]:
        async with db.system() as conn:
            existing = await tenant_service.list_tenants(conn, status="active", name=DEMO_TENANT_NAME, limit=1)
            tenant = existing[0] if existing else await tenant_service.create_tenant(conn, DEMO_TENANT_NAME, "pro")
            keys = {k.id: k for k in await api_keys.list_keys(conn, tenant.id) if k.revoked_at is None}
            if kept is not None and kept[0] == tenant.id and kept[1] in keys:
                return tenant, kept[1], kept[2], True
            for key in keys.values():
                if key.name == "dev":
                    await api_keys.revoke_key(conn, tenant.id, key.id)
            info, secret = await api_keys.create_key(conn, tenant.id, "dev")
        return tenant, info.id, secret, False

    result: tuple[tenant_service.Tenant, uuid.UUID, str, bool] = await _with_system_db(settings, work)
    return result


def _read_demo_key(path: Path) -> tuple[uuid.UUID, uuid.UUID, str] | None:
    try:
        data = json.loads(path.read_text())
        return uuid.UUID(data["tenant_id"]), uuid.UUID(data["key_id"]), str(data["secret"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    """Bring up PostgreSQL and Redis if nothing answers, migrate, make a demo tenant, serve."""
    # Development tooling, never imported by the gateway itself (its embedded servers are the `dev` extra).
    from tenantry.dev import DevServiceError, ensure_postgres, ensure_redis

    state = Path(args.state_dir)
    try:
        print(f"postgres: {ensure_postgres(settings.database_url, state)}")
        print(f"redis:    {ensure_redis(settings.redis_url, state)}")
    except DevServiceError as exc:
        raise Unavailable(str(exc), code="dev_services_unavailable") from None
    asyncio.run(_migrate(settings, None))
    saved = state / "demo-key.json"
    tenant, key_id, secret, reused = asyncio.run(_demo_tenant(settings, _read_demo_key(saved)))
    if not reused:
        state.mkdir(parents=True, exist_ok=True)
        saved.touch(mode=0o600)
        saved.chmod(0o600)  # also when an older file was there
        saved.write_text(json.dumps({"tenant_id": str(tenant.id), "key_id": str(key_id), "secret": secret}))
    host, port = args.host or settings.host, args.port or settings.port
    base = f"http://{host}:{port}"
    print(
        f"""
Tenantry is starting on {base}

  demo tenant id : {tenant.id}
  demo API key   : {secret}
                   ({"kept from the last run" if reused else "new"}; kept in {saved} for the next run)
  ops credential : Authorization: Bearer {settings.ops_api_key}   (/metrics, /health detail)

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


def cmd_key_list(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)

    async def work(db: Database) -> list[dict[str, Any]]:
        async with db.system() as conn:
            await tenant_service.get_tenant(conn, tenant_id)
            return [k.public() for k in await api_keys.list_keys(conn, tenant_id)]

    keys = asyncio.run(_with_system_db(settings, work))
    human = "\n".join(
        f"{k['id']}  {k['prefix']}…  {'revoked ' + k['revoked_at'] if k['revoked_at'] else 'active':<40} {k['name']}"
        for k in keys
    )
    _emit(args, {"keys": keys}, human or "no keys")
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
    return EXIT_TOOL_ERROR if result.get("isError") else 0


def cmd_probe(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 ok, 1 degraded, 2 down: what a monitoring system's check wants."""
    headers = {"Authorization": f"Bearer {args.key}"}
    if args.tenant:
        headers["Tenant-ID"] = args.tenant
    arguments = _json_object(args.args, "--args", "invalid_arguments")

    async def run() -> dict[str, Any]:
        async with asyncio.timeout(args.timeout):
            return await probe(args.url, headers, tool=args.tool, arguments=arguments)

    try:
        report = asyncio.run(run())
    except TimeoutError:
        report = {
            "status": "down",
            "url": args.url,
            "steps": [{"step": "timeout", "ok": False, "ms": args.timeout * 1000}],
        }
    lines = [
        f"{s['step']:<11} {'ok  ' if s['ok'] else 'FAIL'} {s['ms']:>8.1f} ms  {s.get('detail') or ''}".rstrip()
        for s in report["steps"]
    ]
    _emit(args, report, "\n".join([*lines, f"status: {report['status']}"]))
    return {"ok": 0, "degraded": 1}.get(report["status"], 2)


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
        if name == "dev":
            p.add_argument("--state-dir", default=".tenantry", help="where embedded services keep their data")

    p = command("migrate", "Create the database if missing and apply migrations.", cmd_migrate)
    p.add_argument("--downgrade", metavar="REVISION", help="roll back to REVISION (e.g. 'base') instead")

    tenant = sub.add_parser("tenant", help="Create, list and change tenants.").add_subparsers(
        dest="tenant_command", required=True
    )
    p = command("create", "Create a tenant.", cmd_tenant_create, tenant)
    p.add_argument("--name", required=True, help="the tenant's display name (1-200 characters)")
    p.add_argument("--plan", help="plan name (default: TENANTRY_DEFAULT_PLAN)")
    p.add_argument("--with-key", action="store_true", help="also create its first API key")
    p = command("list", "List tenants.", cmd_tenant_list, tenant)
    p.add_argument("--status", choices=[s.value for s in TenantStatus], help="only tenants with this status")
    p = command("set", "Change a tenant's plan or status.", cmd_tenant_set, tenant)
    p.add_argument("tenant", help="tenant id")
    p.add_argument("--plan", help="the new plan (one of TENANTRY_PLAN_LIMITS)")
    p.add_argument("--status", choices=["active", "suspended"], help="suspend the tenant, or make it active again")
    p.add_argument("--limits", help="""overrides of the plan's limits as JSON, e.g. '{"calls_per_window": 5000}'""")

    key = sub.add_parser("key", help="Create, list and revoke tenant API keys.").add_subparsers(
        dest="key_command", required=True
    )
    p = command("create", "Create an API key for a tenant (the secret is printed once).", cmd_key_create, key)
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--name", default="default", help="a label for the key (default: default)")
    p = command("list", "List a tenant's API keys (prefixes only; secrets are never stored).", cmd_key_list, key)
    p.add_argument("--tenant", required=True, help="tenant id")
    p = command("revoke", "Revoke an API key.", cmd_key_revoke, key)
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("key_id", help="the key's id (from `tenantry key list`)")

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


if __name__ == "__main__":
    sys.exit(main())
