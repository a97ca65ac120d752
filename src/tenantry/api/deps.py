"""FastAPI dependencies: the app's services and the two kinds of caller."""

from __future__ import annotations

import hmac
from typing import Annotated, cast

from fastapi import Depends, Request

from tenantry.auth.jwt import decode_admin_token
from tenantry.auth.middleware import authenticate, bearer_token
from tenantry.errors import Unauthenticated
from tenantry.services import Services
from tenantry.tenancy import Principal


def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]


def require_admin(request: Request, services: ServicesDep) -> None:
    """The admin API key itself, or an admin JWT made from it."""
    token = bearer_token(request.headers.get("authorization"))
    if hmac.compare_digest(token.encode(), services.settings.admin_api_key.encode()):
        return
    if token.count(".") != 2:
        raise Unauthenticated("invalid admin credential", code="invalid_credentials")
    decode_admin_token(services.settings, token)


async def require_tenant(request: Request, services: ServicesDep) -> Principal:
    return await authenticate(services.resolver, request.headers)


AdminDep = Depends(require_admin)
TenantDep = Annotated[Principal, Depends(require_tenant)]
