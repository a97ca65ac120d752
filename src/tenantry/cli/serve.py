"""`tenantry serve`, `migrate`, `dev` (which also keeps a demo tenant and its key) and `balance`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenantry import tenants as tenant_service
from tenantry import tiers
from tenantry.auth import api_keys
from tenantry.cli.common import EXIT_UNAVAILABLE, emit, with_db
from tenantry.db.engine import Database
from tenantry.db.migrate import ensure_database, migrate
from tenantry.db.tier_migrate import migrate_tiers, seal_clear_passwords
from tenantry.errors import TenantryError, Unavailable
from tenantry.observability import configure_logging
from tenantry.secrets import SecretBox
from tenantry.settings import Settings
from tenantry.tenancy import parse_tenant_id
from tenantry.tls import server_context

if TYPE_CHECKING:
    import uvicorn

DEMO_TENANT_NAME = "demo"

# --- serve / migrate / dev -------------------------------------------------------------------------


def with_tls_flags(args: argparse.Namespace, settings: Settings) -> Settings:
    """The settings with the command line's TLS flags (which win over TENANTRY_TLS_*) in them."""
    update = {
        name: value
        for name in ("tls_certfile", "tls_keyfile", "tls_groups")
        if (value := getattr(args, name, None)) is not None
    }
    return Settings.model_validate({**settings.model_dump(), **update}) if update else settings


def server_config(
    settings: Settings, app: Callable[[], Any], *, host: str, port: int, **options: Any
) -> uvicorn.Config:
    """uvicorn's configuration for the gateway: TLS terminated here when a certificate is set, with the
    context `tenantry.tls` builds (the key-exchange groups uvicorn's own cannot set). The certificate
    and key are loaded first, so a wrong file is a clear error before the app is built or anything listens."""
    import uvicorn

    tls_options: dict[str, Any] = {}
    if settings.tls_certfile:
        context = server_context(settings.tls_certfile, settings.tls_keyfile, settings.tls_groups)
        tls_options = {
            "ssl_certfile": settings.tls_certfile,
            "ssl_keyfile": settings.tls_keyfile,
            "ssl_context_factory": lambda _config, _default: context,
        }
    return uvicorn.Config(app(), host=host, port=port, **tls_options, **options)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from tenantry.app import create_app

    settings = with_tls_flags(args, settings)
    level = args.log_level or settings.log_level
    configure_logging(json_lines=settings.json_logs, level=level)
    config = server_config(
        settings,
        lambda: create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_config=None,  # our handler and format (configure_logging), one line per request from the app
        log_level=level,
        access_log=False,
    )
    import uvicorn

    uvicorn.Server(config).run()
    return 0


def cmd_balance(args: argparse.Namespace, settings: Settings) -> int:
    from tenantry import balancer

    configure_logging(json_lines=settings.json_logs, level=settings.log_level)
    for address in [args.listen, *args.backend]:
        balancer.parse_address(address)  # a clear usage error before anything listens
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop comes with uvicorn[standard]; asyncio's own loop works, slower
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(balancer.run(args.listen, args.backend, retry_after=args.retry_after))
    except KeyboardInterrupt:
        pass
    return 0


async def _migrate(settings: Settings, downgrade_to: str | None) -> None:
    # Straight to PostgreSQL, never through a transaction pooler: DDL, the `postgres` database and
    # role changes are no work for one.
    await ensure_database(settings.direct_database_url)
    await migrate(
        settings.direct_database_url,
        app_role=settings.db_app_role,
        app_password=settings.db_app_password,
        revision=downgrade_to or "head",
        downgrade=downgrade_to is not None,
    )


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """The shared tables (unless `--tenant`), then every schema- and database-tier tenant's copy."""
    tenant_id = parse_tenant_id(args.tenant) if args.tenant else None
    if tenant_id is None:
        asyncio.run(_migrate(settings, args.downgrade))
    if args.downgrade:
        emit(args, {"migrated": args.downgrade}, f"database at {args.downgrade}")
        return 0

    async def tiers(db: Database) -> tuple[list[dict[str, Any]], list[str]]:
        sealed = await seal_clear_passwords(db, SecretBox(settings.secret_keys), tenant_id=tenant_id)
        return await migrate_tiers(db, tenant_id=tenant_id), sealed

    report, sealed = asyncio.run(with_db(settings, tiers))
    failed = [entry for entry in report if entry["status"] != "ok"]
    lines = [] if tenant_id else ["database at head"]
    lines += [f"{t}  owner password of its database server sealed (it was in clear in placement_url)" for t in sealed]
    lines += [
        f"{e['tenant_id']}  {e['tier']:<8} revision {e['revision']}  {e['status']}"
        + (f"  {e['error']}" if "error" in e else "")
        for e in report
    ]
    if failed:
        lines.append(f"{len(failed)} tenant(s) failed; run `tenantry migrate` again to retry them")
    emit(args, {"migrated": "head", "tiers": report, "failed": len(failed), "sealed": sealed}, "\n".join(lines))
    return EXIT_UNAVAILABLE if failed else 0


async def _demo_tenant(
    settings: Settings, kept: tuple[uuid.UUID, uuid.UUID, str] | None
) -> tuple[tenant_service.Tenant, uuid.UUID, str, bool]:
    """The demo tenant and a working key for it: `kept` (the key the last run saved) when it still
    works, else a new one, and then the demo tenant's older dev keys are revoked, so runs do not pile
    up live keys. Returns (tenant, key id, secret, reused).

    The demo tenant is on its plan's tier, as `POST /api/tenants` would put it; one kept from a run
    before tiers existed (shared) is moved there too, its data with it (and its old copy cleaned up): a
    demo should show what the README describes. A move that cannot be made is reported, and the demo
    is served where it is."""

    async def work(db: Database) -> tuple[tenant_service.Tenant, uuid.UUID, str, bool]:
        async with db.system() as conn:
            existing = await tenant_service.list_tenants(conn, status="active", name=DEMO_TENANT_NAME, limit=1)
            tenant = existing[0] if existing else await tenant_service.create_tenant(conn, DEMO_TENANT_NAME, "pro")
        try:
            placed = await tiers.place_tenant(db, settings, tenant.id)
            if placed["moved"]:  # a demo's verified old copy is not worth an operator's decision
                await tiers.cleanup_tenant(db, settings, tenant.id)
        except TenantryError as exc:
            print(f"demo tenant left on the {tenant.placement} tier: {exc.detail}", file=sys.stderr)
        async with db.system() as conn:
            tenant = await tenant_service.get_tenant(conn, tenant.id)
            keys = {k.id: k for k in await api_keys.list_keys(conn, tenant.id) if k.revoked_at is None}
            if kept is not None and kept[0] == tenant.id and kept[1] in keys:
                return tenant, kept[1], kept[2], True
            for key in keys.values():
                if key.name == "dev":
                    await api_keys.revoke_key(conn, tenant.id, key.id)
            info, secret = await api_keys.create_key(conn, tenant.id, "dev")
        return tenant, info.id, secret, False

    result: tuple[tenant_service.Tenant, uuid.UUID, str, bool] = await with_db(settings, work)
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
    settings = with_tls_flags(args, settings)
    host, port = args.host or settings.host, args.port or settings.port
    base = f"{'https' if settings.tls_certfile else 'http'}://{host}:{port}"
    print(
        f"""
Tenantry is starting on {base}

  demo tenant id : {tenant.id}   (plan {tenant.plan}, {tenant.placement} tier)
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
