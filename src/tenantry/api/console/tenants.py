"""The tenants page (search, filter, create) and a tenant's page (status, plan and limits, keys,
upstreams, quota window now, kill switch). Changes go through the REST API's own handlers."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from tenantry import tenants as tenant_service
from tenantry.api import admin, governance, upstreams
from tenantry.api.console.actions import back, json_field, refused, words
from tenantry.api.console.html import choice, esc, field, form, link, messages, page, pretty, status, table
from tenantry.api.console.plots import meter
from tenantry.api.console.sessions import ChangeDep, SessionDep
from tenantry.api.deps import ServicesDep
from tenantry.errors import TenantryError
from tenantry.federation.registry import TRANSPORTS
from tenantry.metering.reports import quotas
from tenantry.tenancy import parse_tenant_id

router = APIRouter(prefix="/console", include_in_schema=False)

_STATUSES = ("provisioning", "active", "suspended", "deprovisioned")
_KEY_COLUMNS = ["Name", "Prefix", "Subject", "Roles", "Tools", ""]
_KILL_COLUMNS = ["Scope", "Target", "Reason", "Since", ""]
_LISTED = 1000  # the tenants a search looks through, oldest first


def tabs(tid: uuid.UUID) -> str:
    base = f"/console/tenants/{tid}"
    pages = [("", "Overview"), ("/usage", "Usage"), ("/health", "Health"), ("/policy", "Policy"), ("/audit", "Audit")]
    return '<nav class="tabs">' + "".join(link(base + path, name) for path, name in pages) + "</nav>"


@router.get("/tenants")
async def tenants_page(
    request: Request,
    session: SessionDep,
    services: ServicesDep,
    q: Annotated[str, Query(max_length=200)] = "",
    plan: Annotated[str, Query(max_length=100)] = "",
    status_is: Annotated[str, Query(alias="status", max_length=40)] = "",
) -> Response:
    async with services.db.system() as conn:
        found = await tenant_service.list_tenants(
            conn, status=status_is if status_is in _STATUSES else None, limit=_LISTED
        )
    needle = q.strip().lower()
    shown = [t for t in found if needle in t.name.lower() and (not plan or t.plan == plan)]
    plans = list(services.settings.plans)
    search = (
        '<form method="get" action="/console/tenants" class="row">'
        + field("q", "Name contains", q)
        + choice("plan", "Plan", plans, plan, blank="any")
        + choice("status", "Status", _STATUSES, status_is, blank="any")
        + '<button type="submit" class="quiet">Search</button></form>'
    )
    rows = [
        [link(f"/console/tenants/{t.id}", t.name), esc(t.plan), status(t.status), esc(t.created_at.isoformat()[:19])]
        for t in shown
    ]
    create = form(
        session,
        "/console/tenants",
        field("name", "Name", required=True) + choice("plan", "Plan", plans, services.settings.default_plan),
        button="Create tenant",
    )
    body = (
        messages(request.query_params)
        + f"<section>{search}<p class='muted'>{len(shown)} shown</p>"
        + table(["Name", "Plan", "Status", "Created"], rows, empty="No tenant matches.")
        + f"</section><section><h2>New tenant</h2>{create}</section>"
    )
    return page("Tenants", body, session)


@router.post("/tenants")
async def create_tenant(change: ChangeDep, services: ServicesDep) -> Response:
    try:
        body = admin.TenantCreate(name=change.get("name"), plan=change.get("plan") or None)
        created = await admin.create_tenant(body, services)
    except (TenantryError, ValidationError) as exc:
        return refused(change.session, exc, "/console/tenants")
    return back(f"/console/tenants/{created['id']}", notice=f"Tenant {created['name']} created.")


def _key_rows(session: Any, tid: uuid.UUID, keys: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for key in keys:
        if key["revoked_at"]:
            action = f'<span class="muted">revoked {esc(key["revoked_at"][:19])}</span>'
        else:
            action = form(
                session,
                f"/console/tenants/{tid}/keys/{key['id']}/revoke",
                "",
                button="Revoke",
                kind="danger",
                css="inline",
            )
        rows.append(
            [
                link(f"/console/tenants/{tid}/keys/{key['id']}", key["name"]),
                esc(key["prefix"]),
                esc(key["subject"]),
                esc(", ".join(key["roles"])),
                esc(", ".join(key["tools"]) if key["tools"] else "any"),
                action,
            ]
        )
    return rows


@router.get("/tenants/{tenant_id}")
async def tenant_page(request: Request, tenant_id: str, session: SessionDep, services: ServicesDep) -> Response:
    tid = parse_tenant_id(tenant_id)
    async with services.db.system() as conn:
        tenant = await tenant_service.get_tenant(conn, tid)
    keys = (await admin.list_keys(tenant_id, services))["keys"]
    limits = services.plans.limits(tenant.plan, tenant.limits)
    tool_counts = await services.tool_counts(tid, limits)
    async with services.db.system() as conn:
        now = await quotas(conn, services.meter, tid, limits, tool_counts, db=services.db)
    ups = [] if tenant.status == "deprovisioned" else (await upstreams.list_upstreams(tenant_id, services))["upstreams"]
    kills = (await governance.list_kills(services, tenant_id=tid, lifted=False))["kills"]
    return page(tenant.name, _tenant_body(request, session, services, tenant, keys, now, ups, kills), session)


def _tenant_body(
    request: Request,
    session: Any,
    services: ServicesDep,
    tenant: tenant_service.Tenant,
    keys: list[dict[str, Any]],
    now: dict[str, Any],
    ups: list[dict[str, Any]],
    kills: list[dict[str, Any]],
) -> str:
    tid = tenant.id
    base = f"/console/tenants/{tid}"
    flip = "active" if tenant.status == "suspended" else "suspended"
    toggle = form(
        session,
        f"{base}/update",
        f'<input type="hidden" name="status" value="{flip}">',
        button="Reactivate" if flip == "active" else "Suspend",
        kind="" if flip == "active" else "danger",
        css="inline",
    )
    settings_form = form(
        session,
        f"{base}/update",
        choice("plan", "Plan", list(services.settings.plans), tenant.plan)
        + f'<label>Limit overrides (JSON; {{}} clears)<textarea name="limits" rows="3">{esc(pretty(tenant.limits))}'
        "</textarea></label>",
        button="Save plan and limits",
    )
    quota_rows = []
    for kind, quota in (now.get("quotas") or {}).items():
        quota_rows.append([esc(kind), meter(quota.get("used"), quota.get("limit"))])
    quota_html = (
        table(["Quota", "Used now"], quota_rows)
        if now.get("quotas") is not None
        else (f'<p class="error">The meter is unreachable ({esc(now.get("quotas_error"))}).</p>')
    )
    key_form = form(
        session,
        f"{base}/keys",
        field("name", "Key name", "default", required=True)
        + field("subject", "Subject (default: name)")
        + field("roles", "Roles (comma-separated)")
        + field("tools", "Tools it may call (globs; blank: any)"),
        button="Create key",
    )
    up_rows = [[link(f"{base}/upstreams/{u['id']}", u["name"]), esc(u["url"]), esc(u["transport"])] for u in ups]
    up_form = form(
        session,
        f"{base}/upstreams",
        field("name", "Name", required=True)
        + field("url", "URL", required=True, size=40)
        + choice("transport", "Transport", TRANSPORTS, "streamable_http")
        + field("headers", "Headers (JSON, sealed)")
        + field("costs", "Costs (JSON)")
        + field("operations", 'openapi: operations (JSON, e.g. {"include": ["tag:items"]})', size=40)
        + "<label>openapi: the document (JSON or YAML; blank: fetched from the URL, else the URL is the"
        + ' API\'s base URL)<textarea name="document" rows="4"></textarea></label>',
        button="Add upstream",
    )
    kill_rows = [
        [
            esc(k["scope"]),
            esc(k["target"]),
            esc(k["reason"]),
            esc(k["created_at"][:19]),
            form(session, f"{base}/kills/{k['id']}/lift", "", button="Lift", kind="quiet", css="inline"),
        ]
        for k in kills
    ]
    kill_form = form(
        session,
        f"{base}/kills",
        choice("scope", "Stop", ["tenant", "tool", "key", "subject", "session"], "tenant")
        + field("target", "Target (not for the tenant)")
        + field("reason", "Reason"),
        button="Kill",
        kind="danger",
    )
    return (
        messages(request.query_params)
        + tabs(tid)
        + f"<section><p>Status {status(tenant.status)} · plan <b>{esc(tenant.plan)}</b> · id <code>{esc(tid)}</code>"
        f" {toggle if tenant.status in ('active', 'suspended') else ''}"
        f" {link(f'{base}/offboard', 'Offboard…') if tenant.status != 'deprovisioned' else ''}</p>"
        f"{settings_form}</section>"
        f"<section><h2>Quota window now</h2>{quota_html}</section>"
        f"<section><h2>Keys</h2>{table(_KEY_COLUMNS, _key_rows(session, tid, keys))}"
        f"{key_form}</section>"
        f"<section><h2>Upstreams</h2>{table(['Name', 'URL', 'Transport'], up_rows)}{up_form}</section>"
        f"<section><h2>Kill switch</h2>{table(_KILL_COLUMNS, kill_rows, empty='Nothing is stopped.')}"
        f"{kill_form}</section>"
    )


@router.post("/tenants/{tenant_id}/update")
async def update_tenant(tenant_id: str, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}"
    try:
        raw_limits = change.form.get("limits")
        body = admin.TenantPatch(
            plan=change.get("plan") or None,
            status=change.get("status") or None,  # checked by the model
            limits=json_field(raw_limits, "limits", default={}) if raw_limits is not None else None,
        )
        updated = await admin.update_tenant(tenant_id, body, services)
    except (TenantryError, ValidationError) as exc:
        return refused(change.session, exc, here)
    return back(here, notice=f"Saved: {updated['status']}, plan {updated['plan']}.")


@router.post("/tenants/{tenant_id}/keys")
async def create_key(tenant_id: str, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}"
    try:
        body = admin.KeyCreate(
            name=change.get("name") or "default",
            subject=change.get("subject") or None,
            roles=words(change.get("roles")),
            tools=words(change.get("tools")) or None,
        )
        created = await admin.create_key(tenant_id, services, body)
    except (TenantryError, ValidationError) as exc:
        return refused(change.session, exc, here)
    # Shown on this answer only: never in a URL, a log line or a later page.
    shown = (
        f"<section><p>Key <b>{esc(created['name'])}</b> created. Its secret is shown <b>only now</b>; store it:</p>"
        f'<p class="secret" id="key-secret">{esc(created["secret"])}</p>'
        f"<p>Call the gateway with <code>Authorization: Bearer &lt;secret&gt;</code> and "
        f"<code>Tenant-ID: {esc(tenant_id)}</code>.</p><p>{link(here, 'Back to the tenant')}</p></section>"
    )
    return page("Key created", shown, change.session)


@router.post("/tenants/{tenant_id}/keys/{key_id}/revoke")
async def revoke_key(tenant_id: str, key_id: uuid.UUID, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}"
    try:
        revoked = await admin.revoke_key(tenant_id, key_id, services)
    except TenantryError as exc:
        return refused(change.session, exc, here)
    return back(here, notice=f"Key {revoked['name']} revoked.")
