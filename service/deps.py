"""FastAPI dependencies as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from service.auth import OPEN_TENANT, Tenant, bearer, check_admin
from service.errors import APIError
from service.gateway import Gateway

_OPEN = Tenant(OPEN_TENANT, None, frozenset({"*"}), see_detections=True)  # loopback-only development mode


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]


def _tenant(gateway: GatewayDep, authorization: Annotated[str | None, Header()] = None) -> Tenant:
    if gateway.keys.empty:
        return _OPEN  # loopback-only open mode (checked at start-up)
    tenant = gateway.keys.lookup(bearer(authorization))
    if tenant is None:
        raise APIError(401, "missing or invalid API key (Authorization: Bearer <key>)", type="authentication_error",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    return tenant


TenantDep = Annotated[Tenant, Depends(_tenant)]


def _operator(gateway: GatewayDep, authorization: Annotated[str | None, Header()] = None) -> None:
    token = gateway.settings.admin_token
    check_admin(bearer(authorization), token.get_secret_value() if token else None)


OperatorDep = Depends(_operator)
