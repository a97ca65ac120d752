"""Console sessions: who signed in, kept in Redis, and the CSRF token every change must carry.

A session is a random id in an HttpOnly, SameSite=Strict cookie (Secure when the request came over
TLS); Redis holds `<prefix>:console:session:<sha256 of the id>` -> {csrf, subject} with a TTL, so a
leaked Redis dump names no usable cookie. Signing out deletes the key: the cookie is then worth nothing.
Every POST carries the session's CSRF token in a hidden form field, compared in constant time; a
change without it is refused (403) before anything runs. Failed sign-ins are counted per client address
in Redis and refused past `console_sign_in_attempts` a minute; each one is audited like any console
request (the observer records every `/console` request).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Annotated, Final
from urllib.parse import parse_qsl

from fastapi import Depends, Request
from fastapi.responses import Response

from tenantry.api.deps import ServicesDep
from tenantry.auth.jwt import decode_admin_token
from tenantry.errors import TenantryError
from tenantry.observability import note
from tenantry.services import Services

COOKIE: Final = "tenantry_console"
SIGN_IN_PATH: Final = "/console/sign-in"
MAX_FORM_BYTES: Final = 256 * 1024
_ATTEMPT_WINDOW_SECONDS: Final = 60


class SignInNeeded(Exception):
    """No valid session: the console answers with a 303 to the sign-in page."""


class CsrfRefused(Exception):
    """A change without the session's CSRF token: 403, nothing done."""


@dataclass(frozen=True)
class Session:
    id_hash: str
    csrf: str
    subject: str


@dataclass(frozen=True)
class Change:
    """A POST that passed the session and CSRF checks, with its form fields."""

    session: Session
    form: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.form.get(name, default).strip()


def _key(services: Services, id_hash: str) -> str:
    return f"{services.settings.redis_key_prefix}:console:session:{id_hash}"


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def admin_subject(services: Services, credential: str) -> str | None:
    """Who `credential` signs in as: the admin key itself, or an admin JWT made from it; None: neither."""
    settings = services.settings
    if hmac.compare_digest(credential.encode(), settings.admin_api_key.encode()):
        return "admin:key"
    if credential.count(".") == 2:
        try:
            decode_admin_token(settings, credential)
        except TenantryError:
            return None
        return "admin:token"
    return None


async def sign_in_allowed(services: Services, client: str) -> bool:
    """Whether `client` has failed fewer than the allowed sign-ins in the last minute."""
    key = f"{services.settings.redis_key_prefix}:console:failed:{client}"
    failed = await services.commands.execute("GET", key)
    return failed is None or int(failed) < services.settings.console_sign_in_attempts


async def note_failed_sign_in(services: Services, client: str) -> None:
    key = f"{services.settings.redis_key_prefix}:console:failed:{client}"
    # The counter gets its expiry when it is created, before it is counted: no count ever outlives its
    # window (INCR keeps the expiry). Two commands of one key, so one master on a Redis Cluster too.
    await services.commands.execute_many([("SET", key, 0, "EX", _ATTEMPT_WINDOW_SECONDS, "NX"), ("INCR", key)])


async def start(services: Services, response: Response, subject: str, *, tls: bool) -> None:
    """Make a session for `subject` and set its cookie on `response`."""
    session_id = secrets.token_urlsafe(32)
    ttl = services.settings.console_session_ttl_seconds
    value = json.dumps({"csrf": secrets.token_urlsafe(32), "subject": subject})
    await services.commands.execute("SET", _key(services, _hash(session_id)), value, "EX", ttl)
    response.set_cookie(COOKIE, session_id, max_age=ttl, path="/console", httponly=True, secure=tls, samesite="strict")


async def end(services: Services, request: Request, response: Response) -> None:
    """Delete the session (its cookie is worthless from now on) and clear the cookie."""
    session_id = request.cookies.get(COOKIE)
    if session_id:
        await services.commands.execute("DEL", _key(services, _hash(session_id)))
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")


async def current(services: Services, request: Request) -> Session | None:
    session_id = request.cookies.get(COOKIE)
    if not session_id or len(session_id) > 100:
        return None
    id_hash = _hash(session_id)
    raw = await services.commands.execute("GET", _key(services, id_hash))
    if raw is None:
        return None
    stored = json.loads(raw)
    return Session(id_hash, str(stored["csrf"]), str(stored["subject"]))


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the console's forms post nothing else); the last value of a repeated field."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise CsrfRefused
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


async def signed_in(request: Request, services: ServicesDep) -> Session:
    """A console page's caller: a live session, else a redirect to sign in."""
    session = await current(services, request)
    if session is None:
        raise SignInNeeded
    note(subject=f"console:{session.subject}")
    return session


async def change(request: Request, services: ServicesDep) -> Change:
    """A console change: a live session and, in the form, that session's CSRF token."""
    session = await signed_in(request, services)
    form = await read_form(request)
    token = form.get("csrf", "")
    if not hmac.compare_digest(token.encode(), session.csrf.encode()):
        raise CsrfRefused
    return Change(session, form)


SessionDep = Annotated[Session, Depends(signed_in)]
ChangeDep = Annotated[Change, Depends(change)]
