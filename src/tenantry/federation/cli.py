"""`tenantry upstream add|list|remove|rotate-secrets`: the same service calls the admin API makes.

The CLI writes the database directly and tells no gateway; it need not:
the `upstreams` triggers (migration 0005) announce each change at commit, and
every running gateway's listener (`federation/changes.py`) acts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

from tenantry import tenants as tenant_service
from tenantry.audit.changes import record_change
from tenantry.db.engine import CONTROL, Database
from tenantry.errors import TenantryError
from tenantry.federation import openapi, registry
from tenantry.federation.ssrf import check_url
from tenantry.plans import PlanBook
from tenantry.secrets import SecretBox
from tenantry.settings import Settings
from tenantry.tenancy import parse_tenant_id


def _emit(args: argparse.Namespace, data: dict[str, Any], human: str) -> None:
    print(json.dumps(data, indent=2) if args.json else human)


def _run(settings: Settings, work: Callable[[Database], Any]) -> Any:
    async def main() -> Any:
        db = Database(settings)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


def _headers(pairs: list[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep:
            raise TenantryError(f"--header wants 'Name: value', got {pair[:60]!r}", code="invalid_header")
        headers[name.strip()] = value.strip()
    return headers


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)
    headers = registry.check_headers(_headers(args.header))
    registry.check_name(args.name)
    registry.check_transport(args.transport)
    try:
        costs = {str(k): int(v) for k, v in json.loads(args.costs).items()}
    except (ValueError, AttributeError) as exc:
        raise TenantryError("--costs must be a JSON object of tool -> integer", code="invalid_costs") from exc
    registry.check_costs(costs)
    filters = {k: v for k, v in (("include", args.include), ("exclude", args.exclude)) if v}
    if args.transport != "openapi" and (args.document or filters):
        raise TenantryError(
            "--document, --include and --exclude are for --transport openapi", code="invalid_upstream_kind"
        )
    uploaded = None
    if args.document:
        try:
            with open(args.document, encoding="utf-8") as file:
                uploaded = file.read(settings.openapi_max_document_bytes + 1)
        except OSError as exc:
            raise TenantryError(
                f"cannot read {args.document!r}: {exc.strerror}", code="invalid_openapi_document"
            ) from exc

    async def work(db: Database) -> dict[str, Any]:
        document, operations = None, None
        if args.transport == "openapi":
            document, operations = await openapi.prepare(
                settings, url=args.url, headers=headers, document=uploaded, filters=filters
            )
        else:
            await check_url(
                args.url, allow_private=settings.upstream_allow_private, allow_loopback=settings.upstream_allow_loopback
            )
        async with db.system() as conn:
            tenant = await tenant_service.get_tenant(conn, tenant_id)
        limits = PlanBook(settings).limits(tenant.plan, tenant.limits)
        async with db.tenant(tenant_id, plane=CONTROL) as conn:
            created = await registry.create_upstream(
                conn,
                SecretBox(settings.secret_keys),
                tenant_id,
                name=args.name,
                url=args.url,
                transport=args.transport,
                headers=headers,
                costs=costs,
                max_upstreams=limits.max_upstreams,
                document=document,
                operations=operations,
            )
            after = {**created.public(), "headers": headers}  # only that credentials were set is recorded
            await record_change(db, conn, tenant_id, "upstream.create", created.id, None, after)
        return created.public()

    up = _run(settings, work)
    _emit(args, {"upstream": up}, f"upstream {up['id']} ({up['name']} -> {up['url']})")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)

    async def work(db: Database) -> list[dict[str, Any]]:
        async with db.tenant(tenant_id, plane=CONTROL) as conn:
            return [u.public() for u in await registry.list_upstreams(conn)]

    found = _run(settings, work)
    _emit(
        args,
        {"upstreams": found},
        "\n".join(f"{u['id']}  {u['name']:<20} {u['transport']:<16} {u['url']}" for u in found),
    )
    return 0


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    tenant_id = parse_tenant_id(args.tenant)
    try:
        upstream_id = uuid.UUID(args.upstream_id)
    except ValueError:
        raise TenantryError("the upstream id is not a UUID", code="invalid_upstream_id") from None

    async def work(db: Database) -> dict[str, Any]:
        async with db.tenant(tenant_id, plane=CONTROL) as conn:
            deleted = (await registry.delete_upstream(conn, upstream_id)).public()
            await record_change(db, conn, tenant_id, "upstream.delete", upstream_id, deleted, None)
            return deleted

    up = _run(settings, work)
    _emit(args, {"upstream": up}, f"upstream {up['id']} ({up['name']}) removed")
    return 0


def cmd_rotate(args: argparse.Namespace, settings: Settings) -> int:
    async def work(db: Database) -> int:
        # Cross-tenant by nature: the owner role re-encrypts every tenant's credentials.
        async with db.system() as conn:
            count = await registry.rotate_credentials(conn, SecretBox(settings.secret_keys))
            await record_change(db, conn, None, "upstream.rotate_secrets", "*", None, {"rotated": count})
            return count

    count = _run(settings, work)
    _emit(args, {"rotated": count}, f"{count} upstream credential(s) re-encrypted under the newest key")
    return 0


def add_commands(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    group = sub.add_parser("upstream", help="Register a tenant's upstream MCP servers.").add_subparsers(
        dest="upstream_command", required=True
    )
    p = command("add", "Register an upstream MCP server for a tenant.", cmd_add, group)
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--name", required=True, help="a slug; its tools appear as NAME__tool")
    p.add_argument(
        "--url",
        required=True,
        help="the upstream's MCP endpoint; for openapi, its document's URL (or, with --document, the API's base URL)",
    )
    p.add_argument(
        "--transport", default="streamable_http", help="streamable_http (default), sse, or openapi (a REST API)"
    )
    p.add_argument(
        "--document", help="openapi: an OpenAPI 3 document file (JSON or YAML) to store instead of fetching --url"
    )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        help="openapi: offer only operations matching (glob on the name, or tag:GLOB; repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        help="openapi: leave out operations matching (glob on the name, or tag:GLOB; repeatable)",
    )
    p.add_argument("--header", action="append", default=[], help="'Name: value' to inject (repeatable; encrypted)")
    p.add_argument("--costs", default="{}", help="units per tool as JSON, e.g. '{\"search\": 3}' (default 1)")
    p = command("list", "List a tenant's upstreams (header names only, never values).", cmd_list, group)
    p.add_argument("--tenant", required=True, help="tenant id")
    p = command("remove", "Remove an upstream and its pinned tools.", cmd_remove, group)
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("upstream_id", help="the upstream's id (from `tenantry upstream list`)")
    command("rotate-secrets", "Re-encrypt every stored upstream credential under the newest key.", cmd_rotate, group)
