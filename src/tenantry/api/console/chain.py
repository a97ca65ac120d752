"""A tenant's audit chain verified from the console: the REST verification itself (`GET
/api/tenants/{id}/audit/verify`, `audit/store.verify`), run after the button's answer, its verdict kept
in Redis for an hour.

Verification walks the whole chain: about 15 µs of CPU a record (bench/bench_console.py: 0.8 s for
20,000 records on a loaded machine), so many seconds for a tenant with a million calls, while a console
page must answer in 200 ms. So the button (a POST with the CSRF token) answers at once, a redirect to the
verdict's page, and the walk runs as that response's background task (Starlette runs it once the
response is sent; a graceful shutdown waits for it as for the request it belongs to). The verdict's page
says "running" and asks the browser to load it again every 2 s (a `Refresh` header: no script) until the
verdict is in Redis, whichever replica is asked. One walk per tenant at a time: a click while one runs
starts nothing; a walk whose process died frees the tenant after `_RUNNING_SECONDS`.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response
from starlette.background import BackgroundTask

from tenantry.api import audit as audit_api
from tenantry.api.console.html import esc, form, link, page, status
from tenantry.api.console.sessions import ChangeDep, Session, SessionDep
from tenantry.api.console.tenants import tabs
from tenantry.api.deps import ServicesDep
from tenantry.services import Services

log = logging.getLogger(__name__)

router = APIRouter(prefix="/console/tenants/{tenant_id}/audit/verify", include_in_schema=False)

_RUNNING_SECONDS: Final = 900
_KEPT_SECONDS: Final = 3600
REFRESH_SECONDS: Final = 2


def _key(services: Services, tid: uuid.UUID, what: str) -> str:
    return f"{services.settings.redis_key_prefix}:console:verify:{tid}:{what}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def _walk(services: Services, tid: uuid.UUID) -> None:
    """Verify the chain and keep the verdict (or that it failed); free the tenant for the next walk."""
    try:
        verdict = await audit_api.audit_verify(str(tid), services)
        kept: dict[str, Any] = {"state": "done", "at": _now(), "verdict": verdict}
    except Exception as exc:  # the verdict's page says it failed; the log says why
        log.exception("verifying the audit chain of tenant %s failed", tid)
        kept = {"state": "failed", "at": _now(), "error": type(exc).__name__}
    try:
        await services.redis.set(_key(services, tid, "verdict"), json.dumps(kept), ex=_KEPT_SECONDS)
    finally:
        await services.redis.delete(_key(services, tid, "running"))


def _verdict(verdict: dict[str, Any], at: str) -> str:
    broken = verdict["broken"]
    if broken is None:
        said = (
            f'<p id="verdict">{status("ok")} <b>Intact</b>: {esc(verdict["checked"])} record(s) checked, '
            f"seq {esc(verdict['first_seq'])} to {esc(verdict['head_seq'])} (verified {esc(at)} UTC).</p>"
        )
    else:
        said = (
            f'<p id="verdict">{status("fail")} <b>Broken</b> at seq {esc(broken["seq"])}: '
            f"{esc(broken['problem'])} (verified {esc(at)} UTC).</p><p>{esc(verdict['checked'])} record(s) before "
            f"it are intact (from seq {esc(verdict['first_seq'])}); record id <code>{esc(broken['id'] or '-')}</code>"
            f", at {esc(broken['at'] or '-')}.</p>"
        )
    return (
        f"{said}<p class='muted'>Head hash <code>{esc(verdict['head_hash'])}</code> at seq "
        f"{esc(verdict['head_seq'])}: kept elsewhere, it also proves the trail was not rewritten wholesale.</p>"
    )


def _button(session: Session, here: str, label: str) -> str:
    return form(session, here, "", button=label, kind="quiet", css="inline")


@router.post("")
async def start_verification(tenant_id: str, change: ChangeDep, services: ServicesDep) -> Response:
    tid = await audit_api.trail_of(services, tenant_id)  # 400 / 404 before anything runs
    started = await services.redis.set(_key(services, tid, "running"), _now(), nx=True, ex=_RUNNING_SECONDS)
    walk = BackgroundTask(_walk, services, tid) if started else None
    return RedirectResponse(f"/console/tenants/{tid}/audit/verify", status_code=303, background=walk)


@router.get("")
async def verification_page(tenant_id: str, session: SessionDep, services: ServicesDep) -> Response:
    tid = await audit_api.trail_of(services, tenant_id)
    here = f"/console/tenants/{tid}/audit/verify"
    running = await services.redis.get(_key(services, tid, "running"))
    raw = await services.redis.get(_key(services, tid, "verdict"))
    kept = json.loads(raw) if raw is not None else None
    back = f"<p>{link(f'/console/tenants/{tid}/audit', 'Back to the trail')}</p>"
    if running is not None:
        since = running.decode() if isinstance(running, bytes) else str(running)
        said = f'<p id="verdict">Verifying the chain (since {esc(since)} UTC); this page reloads until it is done.</p>'
        answer = page("Audit chain", tabs(tid) + f"<section>{said}{back}</section>", session)
        answer.headers["Refresh"] = str(REFRESH_SECONDS)
        return answer
    if kept is None:
        said = '<p id="verdict">No verification in the last hour.</p>'
    elif kept["state"] == "failed":
        said = (
            f'<p id="verdict">{status("fail")} The verification could not finish ({esc(kept["error"])}, '
            f"{esc(kept['at'])} UTC); the gateway's log says why.</p>"
        )
    else:
        said = _verdict(kept["verdict"], kept["at"])
    again = _button(session, here, "Verify the chain" if kept is None else "Verify again")
    return page("Audit chain", tabs(tid) + f"<section>{said}{again}{back}</section>", session)
