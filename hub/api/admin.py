"""Client administration over HTTP, for admin clients: list, register, revoke.

The same operations as ``yijian clients``; a new client's secret is returned once.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from hub.api.dependencies import Caller, get_hub
from hub.fhir.outcomes import FhirError, forbidden
from hub.security.audit import AuditRecord
from hub.security.clients import ClientRecord, ClientRegistry, UnknownOrganization
from hub.security.principals import ClientKind, Principal

router = APIRouter(prefix="/admin", tags=["admin"])


class NewClient(BaseModel):
    kind: ClientKind
    organization: str = Field(description="id of the Organization the client acts for")
    name: str = Field(min_length=1, max_length=200)
    scope: str | None = Field(default=None, description="SMART scopes; default by kind")


def _require_admin(principal: Principal) -> None:
    if principal.kind != ClientKind.ADMIN:
        raise forbidden("client administration is for admin clients")


def _public(record: ClientRecord) -> dict[str, Any]:
    return {
        "client_id": record.client_id,
        "name": record.name,
        "kind": str(record.kind),
        "organization": record.organization,
        "scope": " ".join(sorted(record.scopes)),
        "created": record.created_at.isoformat(),
        "revoked": record.revoked_at.isoformat() if record.revoked_at else None,
    }


async def _audit(
    request: Request, principal: Principal, action: str, interaction: str, entity: str, status: int
) -> None:
    await get_hub(request).audit.record(
        AuditRecord.for_status(
            status,
            action=action,
            interaction=interaction,
            client_id=principal.client_id,
            client_kind=str(principal.kind),
            organization=principal.organization,
            source_ip=request.client.host if request.client else None,
            request_id=getattr(request.state, "request_id", None),
            entities=[entity],
        )
    )


@router.get("/clients")
async def list_clients(request: Request, principal: Caller) -> JSONResponse:
    _require_admin(principal)
    async with get_hub(request).database.connection() as conn:
        records = await ClientRegistry(conn).list()
    return JSONResponse([_public(r) for r in records])


@router.post("/clients", status_code=201)
async def add_client(body: NewClient, request: Request, principal: Caller) -> JSONResponse:
    _require_admin(principal)
    async with get_hub(request).database.connection() as conn:
        try:
            record, secret = await ClientRegistry(conn).add(
                body.kind, body.organization, body.name, body.scope
            )
        except UnknownOrganization as error:
            raise FhirError(422, "not-found", str(error)) from None
        except ValueError as error:
            raise FhirError(422, "value", str(error)) from None
    await _audit(request, principal, "C", "client-add", f"client/{record.client_id}", 201)
    return JSONResponse({**_public(record), "client_secret": secret}, status_code=201)


@router.post("/clients/{client_id}/revoke")
async def revoke_client(client_id: str, request: Request, principal: Caller) -> JSONResponse:
    _require_admin(principal)
    hub = get_hub(request)
    async with hub.database.connection() as conn:
        done = await ClientRegistry(conn).revoke(client_id)
    await _audit(
        request, principal, "D", "client-revoke", f"client/{client_id}", 200 if done else 404
    )
    if not done:
        raise FhirError(404, "not-found", f"no active client {client_id}")
    await hub.refresh_revocations()  # this process stops accepting its tokens at once
    return JSONResponse({"client_id": client_id, "revoked": True})
