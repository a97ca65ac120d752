"""A tenant's policy dry-run in the console: may this subject, with these roles and claims, call this tool
with these arguments, and what would the tool be given? The REST dry-run's handler answers
(`POST /api/tenants/{id}/policy/dry-run`, `api/governance.py`), with its request model; nothing is stored.

The form posts (with the session's CSRF token, as every console form) rather than putting arguments,
which may hold anything, in a URL, where logs and the browser's history would keep them.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from tenantry import tenants as tenant_service
from tenantry.api import governance as governance_api
from tenantry.api.console.actions import json_field, refused, words
from tenantry.api.console.html import esc, field, form, link, messages, page, pretty, status
from tenantry.api.console.sessions import ChangeDep, Session, SessionDep
from tenantry.api.console.tenants import tabs
from tenantry.api.deps import ServicesDep
from tenantry.errors import TenantryError
from tenantry.tenancy import parse_tenant_id

router = APIRouter(prefix="/console/tenants/{tenant_id}/policy/dry-run", include_in_schema=False)

_FIELDS: Final = ("subject", "roles", "claims", "tool", "arguments", "document")


def _textarea(name: str, label: str, value: str, rows: int) -> str:
    return f'<label>{esc(label)}<textarea name="{name}" rows="{rows}">{esc(value)}</textarea></label>'


def _form(session: Session, tid: uuid.UUID, values: dict[str, str]) -> str:
    inner = (
        '<div class="row">'
        + field("subject", "Subject", values.get("subject", ""), required=True)
        + field("roles", "Roles (comma-separated)", values.get("roles", ""))
        + field("tool", "Tool", values.get("tool", ""), required=True, size=30)
        + "</div>"
        + _textarea("arguments", "Arguments (a JSON object)", values.get("arguments", "{}"), 5)
        + _textarea("claims", 'Claims (a JSON object of strings, e.g. {"org": "acme"})', values.get("claims", ""), 2)
        + _textarea("document", "A draft policy to try (JSON; blank: the stored policy)", values.get("document", ""), 6)
    )
    return form(session, f"/console/tenants/{tid}/policy/dry-run", inner, button="Dry run", css="")


def _verdict(answer: dict[str, Any]) -> str:
    roles = ", ".join(answer["roles"]) or "no roles"
    who = f"<b>{esc(answer['subject'])}</b> ({esc(roles)}) calling <code>{esc(answer['tool'])}</code>"
    if answer["allowed"]:
        return (
            f'<p id="decision">{status("ok")} <b>Allowed</b> by {esc(answer["rule"])}: {who}.</p>'
            f"<p>The tool would be given:</p><pre>{esc(pretty(answer['arguments']))}</pre>"
        )
    rule = f" (rule {esc(answer['rule'])})" if answer.get("rule") else ""
    return (
        f'<p id="decision">{status("fail")} <b>Refused</b>{rule}: {who}.</p>'
        f"<p>{esc(answer.get('detail'))} (<code>{esc(answer.get('error'))}</code>)</p>"
    )


def _body(request: Request, session: Session, tid: uuid.UUID, values: dict[str, str], verdict: str = "") -> str:
    intro = (
        "Nothing is called and nothing is stored: this is what the policy decides, the answer of "
        f"<code>POST /api/tenants/{esc(tid)}/policy/dry-run</code>. "
        + link(f"/console/tenants/{tid}/policy", "Back to the policy")
    )
    shown = f"<section><h2>Decision</h2>{verdict}</section>" if verdict else ""
    return (
        messages(request.query_params)
        + tabs(tid)
        + shown
        + f"<section><p class='muted'>{intro}</p>{_form(session, tid, values)}</section>"
    )


@router.get("")
async def dry_run_page(request: Request, tenant_id: str, session: SessionDep, services: ServicesDep) -> Response:
    tid = parse_tenant_id(tenant_id)
    async with services.db.system() as conn:
        await tenant_service.get_tenant(conn, tid)  # 404 for an unknown tenant
    return page("Policy dry run", _body(request, session, tid, {}), session)


@router.post("")
async def dry_run(request: Request, tenant_id: str, change: ChangeDep, services: ServicesDep) -> Response:
    here = f"/console/tenants/{tenant_id}/policy/dry-run"
    values: dict[str, str] = {name: change.form[name] for name in _FIELDS if name in change.form}
    try:
        given: dict[str, Any] = {name: change.get(name) for name in ("subject", "tool") if name in change.form}
        given["roles"] = words(change.get("roles"))
        given["claims"] = json_field(values.get("claims", ""), "claims", default={})
        given["arguments"] = json_field(values.get("arguments", ""), "arguments", default={})
        given["document"] = json_field(values.get("document", ""), "document", default=None)
        answer = await governance_api.policy_dry_run(tenant_id, governance_api.DryRun(**given), services)
    except (TenantryError, ValidationError) as exc:
        return refused(change.session, exc, here)
    tid = parse_tenant_id(tenant_id)
    return page("Policy dry run", _body(request, change.session, tid, values, _verdict(answer)), change.session)
