"""Signing in (the admin key or an admin token) and out, and the stylesheet every page links."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tenantry.api.console import sessions
from tenantry.api.console.html import CSS, STYLESHEET_PATH, esc, page
from tenantry.api.deps import ServicesDep
from tenantry.observability import note

router = APIRouter(prefix="/console", include_in_schema=False)

_FORM = """
<section><form method="post" action="/console/sign-in" class="row">
<label>Admin key or admin token<input type="password" name="credential" autocomplete="current-password"
 size="60" required autofocus></label><button type="submit">Sign in</button></form>
<p class="muted">The key is <code>TENANTRY_ADMIN_API_KEY</code>; a token is what
<code>POST /api/auth/token</code> issues. The session lasts {hours} h, or until you sign out.</p></section>
"""


def _sign_in_page(services: ServicesDep, error: str = "", *, status_code: int = 200) -> HTMLResponse:
    hours = round(services.settings.console_session_ttl_seconds / 3600, 1)
    shown = f'<div class="error" role="alert">{esc(error)}</div>' if error else ""
    return page("Sign in", shown + _FORM.format(hours=hours), None, status_code=status_code)


@router.get(STYLESHEET_PATH.removeprefix("/console"))
async def stylesheet() -> Response:
    # Public: the sign-in page needs it, and it says nothing about anyone. Not audited: a page view is
    # recorded once, by its page, not again by its stylesheet.
    note(transport=None)
    return Response(CSS, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})


@router.get("")
async def home() -> RedirectResponse:
    return RedirectResponse("/console/tenants", status_code=303)


@router.get("/sign-in")
async def sign_in_form(request: Request, services: ServicesDep) -> Response:
    if await sessions.current(services, request) is not None:
        return RedirectResponse("/console/tenants", status_code=303)
    return _sign_in_page(services)


@router.post("/sign-in")
async def sign_in(request: Request, services: ServicesDep) -> Response:
    client = request.client.host if request.client else "unknown"
    if not await sessions.sign_in_allowed(services, client):
        note(outcome="sign_in_rate_limited")
        return _sign_in_page(services, "Too many failed sign-ins; wait a minute.", status_code=429)
    form = await sessions.read_form(request)
    subject = sessions.admin_subject(services, form.get("credential", "").strip())
    if subject is None:
        await sessions.note_failed_sign_in(services, client)
        note(outcome="invalid_credentials")
        return _sign_in_page(services, "That is neither the admin key nor a valid admin token.", status_code=401)
    note(subject=f"console:{subject}")
    response = RedirectResponse("/console/tenants", status_code=303)
    await sessions.start(services, response, subject, tls=request.url.scheme == "https")
    return response


@router.post("/sign-out")
async def sign_out(request: Request, services: ServicesDep, change: sessions.ChangeDep) -> Response:
    response = RedirectResponse(sessions.SIGN_IN_PATH, status_code=303)
    await sessions.end(services, request, response)
    return response
