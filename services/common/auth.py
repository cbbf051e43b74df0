"""Caller authentication (bearer token per caller) and role checks for every HTTP endpoint."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Role(StrEnum):
    COORDINATOR = "coordinator"
    COURIER = "courier"
    TREATMENT_CENTER = "treatment_center"
    QA = "qa"
    SERVICE = "service"


class Principal(BaseModel):
    """Who is calling. A treatment center is bound to its site, a courier to its company."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: str = Field(min_length=1, max_length=64)
    role: Role
    display_name: str = Field(default="", max_length=128)
    treatment_center_id: str | None = None
    courier_company: str | None = None

    @model_validator(mode="after")
    def _scope_present(self) -> Principal:
        if self.role is Role.TREATMENT_CENTER and not self.treatment_center_id:
            raise ValueError("a treatment_center caller needs treatment_center_id")
        if self.role is Role.COURIER and not self.courier_company:
            raise ValueError("a courier caller needs courier_company")
        return self

    @property
    def site_scope(self) -> str | None:
        """The one site a treatment center acts for; None for every other role (not scoped to a site)."""
        return self.treatment_center_id if self.role is Role.TREATMENT_CENTER else None

    @property
    def company_scope(self) -> str | None:
        """The one courier company a courier acts for; None for every other role."""
        return self.courier_company if self.role is Role.COURIER else None


BEARER = HTTPBearer(auto_error=False)
"""The bearer scheme of every authenticated route; the edge spots it to authenticate before a body is read."""


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """401 unless the bearer token belongs to a configured caller (compared in constant time); 429 past the
    caller's budget, or past the client address's (much smaller) budget of failed authentications
    (`services.common.ratelimit`). Once per request: the edge and the route's dependency share the answer."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    principals: dict[str, Principal] = request.app.state.principals
    limits = getattr(request.app.state, "rate_limits", None)
    if credentials is not None:
        offered = credentials.credentials.encode()
        for token, principal in principals.items():
            if hmac.compare_digest(token.encode(), offered):
                if limits is not None:
                    limits.callers.check(f"caller:{principal.subject}", "too many requests from this caller")
                request.state.principal = principal
                return principal
    if limits is not None:
        address = request.client.host if request.client else "unknown"
        limits.failed_auth.check(f"address:{address}", "too many failed authentications from this address")
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid bearer token",
        headers={"WWW-Authenticate": "Bearer"},
    )


def require(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller and lets only the given roles through (403 for others)."""

    async def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
    ) -> Principal:
        principal = authenticate(request, credentials)
        if principal.role not in roles:
            allowed = ", ".join(role.value for role in roles)
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"role {principal.role} may not do this; needs {allowed}"
            )
        return principal

    return check
