"""FastAPI dependencies: the hub, the calling principal, and the audit scope of a request."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from hub.fhir.outcomes import FhirError
from hub.records.unit_of_work import UnitOfWork
from hub.runtime import Hub
from hub.security.audit import AuditRecord, AuditUnavailable
from hub.security.principals import Principal
from hub.security.tokens import InvalidToken
from hub.storage.resources import WriteContext


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _unauthorized(message: str) -> FhirError:
    return FhirError(
        401,
        "login",
        message,
        headers={"WWW-Authenticate": 'Bearer realm="yijian", error="invalid_token"'},
    )


async def authenticate(request: Request) -> Principal:
    """The principal of a bearer token: 401 when missing, malformed, forged, expired or revoked."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise FhirError(
            401,
            "login",
            "a bearer access token is required",
            headers={"WWW-Authenticate": 'Bearer realm="yijian"'},
        )
    hub = get_hub(request)
    try:
        principal = hub.tokens.verify(token.strip())
    except InvalidToken as error:
        raise _unauthorized(str(error)) from None
    if principal.client_id in hub.revoked:
        raise _unauthorized("the client has been revoked")
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(authenticate)]
"""The authenticated principal of a request (401 without a valid bearer token)."""


def write_context(request: Request, principal: Principal) -> WriteContext:
    return WriteContext(
        principal.client_id, principal.organization, getattr(request.state, "request_id", None)
    )


@dataclass
class AuditScope:
    """Collects what a request touched; written to the audit log when the request ends."""

    interaction: str
    action: str
    patients: set[str] = field(default_factory=set)
    entities: list[str] = field(default_factory=list)
    status: int = 200
    query: str | None = None
    # The caller's purposes of use (``hub.access.service.Access``) when reads relied on them.
    access: Any = None

    def capture(self, uow: UnitOfWork) -> None:
        self.patients |= uow.patients
        self.entities += uow.entities
        if uow.access is not None:
            self.access = uow.access

    def purposes(self) -> list[str]:
        return self.access.purposes(self.patients) if self.access is not None else []


@contextlib.asynccontextmanager
async def audited(
    request: Request,
    principal: Principal | None,
    interaction: str,
    action: str,
    query: str | None = None,
) -> AsyncIterator[AuditScope]:
    """Record an audit event for the request, whatever its outcome, before it is answered."""
    scope = AuditScope(interaction, action, query=query)
    detail = None
    try:
        yield scope
    except FhirError as error:
        scope.status = error.status
        detail = error.diagnostics[:500]
        raise
    except Exception:
        scope.status = 500
        detail = "internal error"
        raise
    finally:
        hub = get_hub(request)
        if detail is None and (purposes := scope.purposes()):
            detail = "purpose: " + ", ".join(purposes)  # e.g. "purpose: break-glass"
        record = AuditRecord.for_status(
            scope.status,
            action=action,
            interaction=interaction,
            client_id=principal.client_id if principal else None,
            client_kind=str(principal.kind) if principal else None,
            organization=principal.organization if principal else None,
            source_ip=request.client.host if request.client else None,
            request_id=getattr(request.state, "request_id", None),
            patients=sorted(scope.patients),
            entities=scope.entities[:1000],
            query=scope.query,
            detail=detail,
        )
        try:
            await hub.audit.record(record)
        except AuditUnavailable as error:
            raise FhirError(
                503, "transient", "the audit log is unavailable; retry later"
            ) from error
