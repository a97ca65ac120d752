"""The admin console at `/console`: server-rendered pages over the same functions the REST API runs.

`install(app)` adds its routes and the two answers its guards raise: no session -> 303 to sign in,
a change without the session's CSRF token -> 403 (nothing done). The app's error handlers answer a
console path with the pages here (`error_page`, `invalid_request_page`, `http_error_page`), never JSON:
a browser shows them.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response

from tenantry.api.console import (
    audit,
    chain,
    dry_run,
    governance,
    keys,
    offboarding,
    sessions,
    signin,
    tenants,
    upstreams,
    usage,
)
from tenantry.api.console.html import esc, page
from tenantry.errors import TenantryError

# Every module that serves console routes (each has `router`).
PAGES = (signin, tenants, keys, upstreams, usage, governance, audit, chain, dry_run, offboarding)


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


_WHERE = {"path": "in the address", "query": "in the query", "body": "in the form", "header": "in a header"}


def invalid_request_page(exc: RequestValidationError) -> Response:
    """A console request FastAPI refused before its handler ran (a malformed id in the path, a query or
    form field out of bounds or missing): a page saying which field and why, 400 as the REST API answers."""
    said = []
    for error in exc.errors()[:5]:
        loc = [str(part) for part in error.get("loc", ())]
        where = _WHERE.get(loc[0], "") if loc else ""
        name = ".".join(loc[1:]) or "the request"
        problem = "must be printable text" if error.get("type") == "string_pattern_mismatch" else error.get("msg")
        said.append(f"{name} {where}: {problem}".replace("  ", " "))
    body = (
        f'<div class="error" role="alert">{esc("; ".join(said) or "The request is not valid.")} '
        '(invalid_request)</div><p>Nothing was changed. <a href="/console/tenants">Tenants</a></p>'
    )
    return page("Not valid", body, None, status_code=400)


def http_error_page(status_code: int, detail: object, headers: dict[str, str]) -> Response:
    """A console path nothing serves (404), a method it does not take (405, with `Allow`)... as a page."""
    body = f'<div class="error" role="alert">{esc(detail)}</div><p><a href="/console/tenants">Tenants</a></p>'
    answer = page("Not found" if status_code == 404 else "Refused", body, None, status_code=status_code)
    answer.headers.update(headers)
    return answer


def install(app: FastAPI) -> None:
    for module in PAGES:
        app.include_router(module.router)
    app.add_exception_handler(sessions.SignInNeeded, _sign_in_needed)
    app.add_exception_handler(sessions.CsrfRefused, _csrf_refused)
