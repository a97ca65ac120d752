"""The admin console at `/console`: server-rendered pages over the same functions the REST API runs.

`install(app)` adds its routes and the two answers its guards raise: no session -> 303 to sign in,
a change without the session's CSRF token -> 403 (nothing done).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from tenantry.api.console import governance, keys, sessions, signin, tenants, upstreams, usage
from tenantry.api.console.html import esc, page
from tenantry.errors import TenantryError


def _sign_in_needed(request: Request, exc: Exception) -> Response:
    return RedirectResponse(sessions.SIGN_IN_PATH, status_code=303)


def _csrf_refused(request: Request, exc: Exception) -> Response:
    body = (
        '<div class="error" role="alert">This form is stale or was not sent from the console '
        "(no valid CSRF token). Nothing was changed.</div>"
    )
    return page("Refused", body, None, status_code=403)


def error_page(exc: TenantryError) -> Response:
    """A console page's error (an unknown tenant, a malformed id) as a page, with the API's status."""
    body = f'<div class="error" role="alert">{esc(exc.detail)} ({esc(exc.code)})</div>'
    return page("Not found" if exc.http_status == 404 else "Refused", body, None, status_code=exc.http_status)


def install(app: FastAPI) -> None:
    for module in (signin, tenants, keys, upstreams, usage, governance):
        app.include_router(module.router)
    app.add_exception_handler(sessions.SignInNeeded, _sign_in_needed)
    app.add_exception_handler(sessions.CsrfRefused, _csrf_refused)
