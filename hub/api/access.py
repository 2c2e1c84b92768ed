"""/access: purposes of use over HTTP, and the admin's view of who accessed a patient.

``POST /access/grants`` establishes a doctor's purpose for one patient — ``TREAT`` (the patient
is registered at the doctor's organization) or ``ETREAT`` (break-glass: any patient, with a
reason, reported) — for clients that do not come through CDS Hooks or the workstation.
``GET /admin/access/patients/{id}`` answers a patient's inquiry: every access to the person's
record (the audit log), with the grants behind it; ``GET /admin/access/break-glass`` lists
emergency uses for review.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from hub.access.repository import AccessRepository
from hub.access.service import grant_json
from hub.api.dependencies import Caller, audited, get_hub
from hub.fhir.outcomes import FhirError, forbidden
from hub.fhir.references import split_reference
from hub.fhir.validation import ID_PATTERN
from hub.security.principals import ClientKind, Principal

router = APIRouter(tags=["access"])


class GrantRequest(BaseModel):
    patient: str = Field(description="Patient/{id} (any of the person's records)")
    purposeOfUse: Literal["TREAT", "ETREAT"] = Field(
        description="TREAT: the patient is in your care; ETREAT: emergency (break-glass)"
    )
    reason: str | None = Field(default=None, max_length=1000)


def patient_id_of(reference: str) -> str:
    """``Patient/{id}`` or a bare id → the id; 400 otherwise (also for an id that no
    resource can have: a NUL would otherwise fail the audit write, a 503)."""
    target_type, target_id, _ = split_reference(reference.strip())
    if target_type not in (None, "Patient") or not target_id or not ID_PATTERN.match(target_id):
        raise FhirError(400, "invalid", "patient must be a reference Patient/{id}")
    return target_id


@router.post("/access/grants", status_code=201)
async def establish(body: GrantRequest, request: Request, principal: Caller) -> JSONResponse:
    hub = get_hub(request)
    patient_id = patient_id_of(body.patient)
    action = "break-glass" if body.purposeOfUse == "ETREAT" else "care"
    async with (
        audited(request, principal, f"access:{action}", "E") as audit,
        hub.database.connection() as connection,
    ):
        audit.patients.add(f"Patient/{patient_id}")
        access = hub.records.access
        if body.purposeOfUse == "ETREAT":
            grant = await access.break_glass(
                connection, principal, patient_id, body.reason or "", "api"
            )
        else:
            grant = await access.open_care(connection, principal, patient_id, "api")
        audit.entities.append(f"urn:uuid:{grant.id}")
    return JSONResponse(grant_json(grant), status_code=201)


@router.delete("/access/grants/{grant_id}", status_code=204)
async def end(grant_id: uuid.UUID, request: Request, principal: Caller) -> Response:
    hub = get_hub(request)
    async with (
        audited(request, principal, "access:end", "U") as audit,
        hub.database.connection() as connection,
    ):
        audit.entities.append(f"urn:uuid:{grant_id}")
        await hub.records.access.revoke(connection, principal, grant_id)
    return Response(status_code=204)


@router.get("/access/grants")
async def mine(request: Request, principal: Caller) -> JSONResponse:
    """The caller's grants and consultations in force."""
    async with get_hub(request).database.connection() as connection:
        live = await AccessRepository(connection).live(principal.client_id)
    return JSONResponse(
        {
            "grants": [
                {
                    "id": str(g.id),
                    "purpose": g.purpose,
                    "patient": f"Patient/{g.patient_id}",
                    "expires": g.expires_at.isoformat(),
                    "source": g.source,
                }
                for g in live
            ]
        }
    )


def _require_admin(principal: Principal) -> None:
    if principal.kind != ClientKind.ADMIN:
        raise forbidden("the access log is for admins")


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v)
        for k, v in row.items()
    }


@router.get("/admin/access/patients/{patient_id}")
async def patient_access(
    patient_id: str, request: Request, principal: Caller, limit: int = 500
) -> JSONResponse:
    """Who saw this person's record, what and when (every record of the person), with the
    purposes of use that allowed it — to answer a patient's inquiry."""
    _require_admin(principal)
    hub = get_hub(request)
    limit = max(1, min(limit, 5000))
    if not ID_PATTERN.match(patient_id):
        raise FhirError(400, "invalid", "not a Patient id")
    async with (
        audited(request, principal, "access:patient-log", "R") as audit,
        hub.database.connection() as connection,
    ):
        audit.patients.add(f"Patient/{patient_id}")
        repository = AccessRepository(connection)
        if not await repository.patient_exists(patient_id):
            raise FhirError(404, "not-found", f"Patient/{patient_id} is not known")
        ids = await repository.group(patient_id)
        accesses = await repository.access_log(ids, limit)
        grants = await repository.grants_of_person(patient_id)
    return JSONResponse(
        {
            "patient": f"Patient/{patient_id}",
            "records": [f"Patient/{i}" for i in ids],
            "accesses": [_jsonable(a) for a in accesses],
            "grants": [_jsonable(g) for g in grants],
        }
    )


@router.get("/admin/access/break-glass")
async def break_glass_report(request: Request, principal: Caller, limit: int = 200) -> JSONResponse:
    """Emergency access uses, newest first, for the operator's review."""
    _require_admin(principal)
    async with get_hub(request).database.connection() as connection:
        uses = await AccessRepository(connection).break_glass_uses(None, max(1, min(limit, 2000)))
    return JSONResponse({"uses": [_jsonable(u) for u in uses]})
