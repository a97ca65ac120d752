"""What every console change does around the service function it calls: the answer after it.

The console calls the same functions the REST API's handlers are (`api/admin.py`, `api/upstreams.py`,
`api/governance.py`), with the same request models: the same checks, the same effects and the same
audit detail (`note_change`). A success redirects (303) back to the page with a notice; a refusal
is a page of its own with the error's status (4xx) and nothing changed.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from tenantry.api.console.html import esc, link, page
from tenantry.api.console.sessions import Session
from tenantry.errors import BadRequest, TenantryError


def back(url: str, *, notice: str) -> RedirectResponse:
    return RedirectResponse(f"{url}?{urlencode({'notice': notice})}", status_code=303)


def problem(exc: Exception) -> tuple[int, str]:
    """(status, what to tell the admin) of a refused change."""
    if isinstance(exc, TenantryError):
        return exc.http_status, f"{exc.detail} ({exc.code})"
    if isinstance(exc, ValidationError):
        said = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'input'}: {e.get('msg')}" for e in exc.errors()[:5]
        )
        return 400, said
    raise exc


def refused(session: Session, exc: Exception, back_to: str) -> HTMLResponse:
    status_code, said = problem(exc)
    body = f'<div class="error" role="alert">{esc(said)}</div><p>Nothing was changed. {link(back_to, "Back")}</p>'
    return page("Not done", body, session, status_code=status_code)


def json_field(raw: str, name: str, *, default: Any = None) -> Any:
    """A form field holding JSON (blank: `default`); malformed JSON is a 400 naming the field."""
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{name} is not valid JSON: {exc.msg} at position {exc.pos}", code="invalid_json") from None


def words(raw: str) -> list[str]:
    """A comma- or space-separated list from a form field."""
    return [word for word in raw.replace(",", " ").split() if word]
