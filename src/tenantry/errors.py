"""One error hierarchy for everything a caller can get wrong or be refused.

    TenantryError (code, http_status)
    ├── BadRequest             400  invalid_request, invalid_tenant_id, invalid_arguments, ...
    ├── Unauthenticated        401  missing or invalid credentials (adds WWW-Authenticate)
    ├── Forbidden              403  wrong tenant, suspended tenant, not an admin
    ├── NotFound               404  unknown tenant, key, tool
    ├── Conflict               409  the resource exists in a state that forbids the change
    ├── PayloadTooLarge        413
    ├── LimitExceeded          429  (quota and rate limits, added by metering)
    ├── InternalError          500  a bug: a tool raised what it should not (never billed)
    └── Unavailable            503  a dependency is down

It is mapped once to HTTP (`to_response`) and once to MCP (`gateway.server`),
so a code means the same thing on every path.
"""

from __future__ import annotations

from typing import Any, ClassVar

from starlette.responses import JSONResponse


class TenantryError(Exception):
    http_status: ClassVar[int] = 400
    default_code: ClassVar[str] = "invalid_request"

    def __init__(self, detail: str, *, code: str | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}

    def headers(self) -> dict[str, str]:
        return {}

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.http_status, headers=self.headers())


class BadRequest(TenantryError):
    http_status = 400


class Unauthenticated(TenantryError):
    http_status = 401
    default_code = "unauthenticated"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="tenantry"'}


class Forbidden(TenantryError):
    http_status = 403
    default_code = "forbidden"


class NotFound(TenantryError):
    http_status = 404
    default_code = "not_found"


class Conflict(TenantryError):
    http_status = 409
    default_code = "conflict"


class PayloadTooLarge(TenantryError):
    http_status = 413
    default_code = "payload_too_large"


class LimitExceeded(TenantryError):
    http_status = 429
    default_code = "rate_limited"

    def headers(self) -> dict[str, str]:
        return _retry_after(self)


class InternalError(TenantryError):
    http_status = 500
    default_code = "internal_error"


class Unavailable(TenantryError):
    http_status = 503
    default_code = "unavailable"

    def headers(self) -> dict[str, str]:
        return _retry_after(self)


def _retry_after(error: TenantryError) -> dict[str, str]:
    """`Retry-After` (whole seconds, rounded up) when the error says when to retry."""
    retry_ms = error.extra.get("retry_after_ms")
    if isinstance(retry_ms, int) and retry_ms >= 0:
        return {"Retry-After": str(max(1, -(-retry_ms // 1000)))}
    return {}
