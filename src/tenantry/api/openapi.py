"""The published contract (`/openapi.json`) as the API really answers, so generated clients work.

FastAPI documents a 422 for every route that reads input, but this API answers bad input with 400 and
`{"error", "detail"}` (`app.py`), and documents none of the 401, 403, 404, 409, 413, 429, 500 and 503
that its routes do answer. Routers declare theirs with `errors(...)`; `document` puts a 400 in place of
every 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

_DESCRIPTIONS = {
    400: "Bad input (nothing was changed): `invalid_request`, `invalid_json`, `invalid_arguments`, ...",
    401: "Missing or invalid credentials (with `WWW-Authenticate: Bearer`)",
    403: "The credential's tenant may not do this: `tenant_mismatch`, `tenant_suspended`, ...",
    404: "No such tenant, key, upstream or tool",
    405: "The path does not take this method (`Allow` lists those it takes)",
    409: "The resource is in a state that forbids the change",
    413: "The request body is larger than `TENANTRY_MAX_REQUEST_BYTES`",
    429: "Over a limit of the tenant's plan: `quota_exceeded`, `rate_limited`, ... (with `Retry-After`)",
    500: "A bug (a tool raised what it should not): `internal_error`, never billed",
    503: "A dependency is unavailable: `meter_unavailable`, `ledger_unavailable`, ... (retry later)",
}


class ErrorBody(BaseModel):
    """Every error this API answers."""

    model_config = ConfigDict(extra="allow")  # some add fields: retry_after_ms, plan, limit, tool

    error: str = Field(description="A machine-readable code, e.g. `tenant_not_found`.")
    detail: str = Field(description="What went wrong, for people.")
    request_id: str | None = Field(default=None, description="The request's id (also in `X-Request-ID`).")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route or router that can answer these error statuses."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


def document(app: FastAPI) -> None:
    """Make `app.openapi()` say 400 where FastAPI says 422."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        bad_input = {
            "description": _DESCRIPTIONS[400],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses.setdefault("400", bad_input)
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
