"""FastAPI dependencies: the app's services and the two kinds of caller."""

from __future__ import annotations

import hmac
from typing import Annotated, cast

from fastapi import Depends, Request

from tenantry.auth.jwt import decode_admin_token
from tenantry.auth.middleware import authenticate, bearer_token
from tenantry.errors import Unauthenticated
from tenantry.observability import note
from tenantry.services import Services
from tenantry.tenancy import Principal


def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]


def require_admin(request: Request, services: ServicesDep) -> None:
    """The admin API key itself, or an admin JWT made from it."""
    token = bearer_token(request.headers.get("authorization"))
    if hmac.compare_digest(token.encode(), services.settings.admin_api_key.encode()):
        note(subject="admin:key")
        return
    if token.count(".") != 2:
        raise Unauthenticated("invalid admin credential", code="invalid_credentials")
    decode_admin_token(services.settings, token)
    note(subject="admin:token")


def is_ops(request: Request, services: Services) -> bool:
    """Whether the request carries an ops credential: the ops key, the admin key or an admin token."""
    try:
        token = bearer_token(request.headers.get("authorization"))
        if hmac.compare_digest(token.encode(), services.settings.ops_api_key.encode()):
            return True
        require_admin(request, services)
    except Unauthenticated:
        return False
    return True


def require_ops(request: Request, services: ServicesDep) -> None:
    if not is_ops(request, services):
        code = "invalid_credentials" if request.headers.get("authorization") else "missing_credentials"
        raise Unauthenticated("this endpoint needs the ops credential (or the admin key)", code=code)


async def require_tenant(request: Request, services: ServicesDep) -> Principal:
    return await authenticate(services.resolver, request.headers)


AdminDep = Depends(require_admin)
OpsDep = Depends(require_ops)
TenantDep = Annotated[Principal, Depends(require_tenant)]
