"""Who is calling: the Principal, and the contextvar that carries it.

The contextvar is a convenience for code deep in a call (logging, metrics);
it is never the source of truth at a boundary. Each boundary re-derives the
principal from its own input (the ASGI middleware from headers, each MCP
message from its own HTTP request, a background task from the tenant it is
handed) and binds it with `bind_principal`, which resets in `finally`.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum

from tenantry.errors import BadRequest, Unauthenticated
from tenantry.plans import Limits


class TenantStatus(StrEnum):
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DEPROVISIONED = "deprovisioned"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated tenant caller: the tenant, the key it came through, and who it speaks for."""

    tenant_id: uuid.UUID
    key_id: uuid.UUID
    plan: str
    via: str  # "api_key", "jwt" or "canary"
    limits: Limits  # the plan's limits with the tenant's own overrides applied
    subject: str = ""  # who calls inside the tenant: the key's subject (or name), or the token's `sub`
    roles: frozenset[str] = frozenset()  # tenant-defined role names
    claims: Mapping[str, str] = field(default_factory=dict)  # string claims of the token (policy templates)
    session: str = ""  # the MCP session of the request (stateful mode), or ""
    tools: tuple[str, ...] | None = None  # the only tools the credential may call (globs); None: any


_current: ContextVar[Principal | None] = ContextVar("tenantry_principal", default=None)


@contextmanager
def bind_principal(principal: Principal) -> Iterator[Principal]:
    token = _current.set(principal)
    try:
        yield principal
    finally:
        _current.reset(token)


def current_principal() -> Principal | None:
    return _current.get()


def require_principal() -> Principal:
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("no tenant is bound to this request")
    return principal


def parse_tenant_id(value: str) -> uuid.UUID:
    """A tenant id from untrusted input, or a 400 that says what was wrong."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise BadRequest(f"tenant id must be a UUID, got {value[:64]!r}", code="invalid_tenant_id") from None


@functools.lru_cache(maxsize=4096)
def _scope(patterns: tuple[str, ...]) -> re.Pattern[str]:
    parts = [re.escape(p).replace(r"\*", ".*").replace(r"\?", ".") for p in patterns]
    return re.compile("(?:" + "|".join(parts) + r")\Z") if parts else re.compile(r"(?!)")


def in_scope(principal: Principal, tool: str) -> bool:
    """Whether the credential's own tool scope (if it has one) lets it call `tool`."""
    return principal.tools is None or _scope(principal.tools).match(tool) is not None
