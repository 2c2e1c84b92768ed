"""/consultations: telemedicine consultations over HTTP (JSON), for doctors' and consultants'
systems; the workstation offers the same through its pages. The consultant reads what was
shared through FHIR (``Patient/{id}/$everything`` returns exactly the consult's scope) and
DICOMweb, with their own token."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, model_validator
from starlette.responses import JSONResponse

from hub.api.access import patient_id_of
from hub.api.dependencies import Caller, audited, get_hub
from hub.consults.service import ConsultRequest

router = APIRouter(prefix="/consultations", tags=["consultations"])


class Period(BaseModel):
    start: datetime
    end: datetime


class Share(BaseModel):
    period: Period | None = None
    items: list[str] | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def one_of(self) -> Share:
        if (self.period is None) == (self.items is None):
            raise ValueError("give either period or items")
        return self


class Consent(BaseModel):
    method: Literal["written", "verbal", "electronic"]
    note: str = Field(default="", max_length=500)


class NewConsult(BaseModel):
    patient: str
    consultant: str = Field(description="the consultant's id: user:<username> or a client id")
    question: str = Field(min_length=1, max_length=4000)
    share: Share
    expires: datetime
    consent: Consent


class Reply(BaseModel):
    text: str = Field(min_length=1, max_length=20000)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@router.get("/consultants")
async def consultants(request: Request, principal: Caller) -> JSONResponse:
    found = await get_hub(request).consults.consultants()
    return JSONResponse(
        {
            "consultants": [
                {
                    "id": p.id,
                    "name": p.name,
                    "organization": p.organization,
                    "organizationName": p.organization_name,
                }
                for p in found
            ]
        }
    )


@router.post("", status_code=201)
async def open_consult(body: NewConsult, request: Request, principal: Caller) -> JSONResponse:
    hub = get_hub(request)
    patient_id = patient_id_of(body.patient)
    async with audited(request, principal, "consult:open", "C") as audit:
        audit.patients.add(f"Patient/{patient_id}")
        consult = await hub.consults.open(
            principal,
            ConsultRequest(
                patient_id,
                body.consultant,
                body.question,
                _aware(body.expires),
                body.consent.method,
                body.consent.note,
                tuple(body.share.items) if body.share.items is not None else None,
                (_aware(body.share.period.start), _aware(body.share.period.end))
                if body.share.period
                else None,
            ),
            getattr(request.state, "request_id", None),
        )
        audit.entities += [
            f"ServiceRequest/{consult.service_request}",
            f"Consent/{consult.consent}",
        ]
    return JSONResponse(consult.json(), status_code=201)


@router.get("")
async def list_consults(request: Request, principal: Caller) -> JSONResponse:
    found = await get_hub(request).consults.involving(principal)
    return JSONResponse({"consults": [c.json() for c in found]})


@router.get("/{consult_id}")
async def get_consult(consult_id: uuid.UUID, request: Request, principal: Caller) -> JSONResponse:
    return JSONResponse((await get_hub(request).consults.get(principal, consult_id)).json())


@router.post("/{consult_id}/revoke")
async def revoke_consult(
    consult_id: uuid.UUID, request: Request, principal: Caller
) -> JSONResponse:
    hub = get_hub(request)
    async with audited(request, principal, "consult:revoke", "U") as audit:
        consult = await hub.consults.revoke(principal, consult_id)
        audit.patients.add(f"Patient/{consult.patient_id}")
        audit.entities.append(f"ServiceRequest/{consult.service_request}")
    return JSONResponse(consult.json())


@router.post("/{consult_id}/reply")
async def reply_consult(
    consult_id: uuid.UUID, body: Reply, request: Request, principal: Caller
) -> JSONResponse:
    hub = get_hub(request)
    async with audited(request, principal, "consult:reply", "C") as audit:
        consult = await hub.consults.reply(
            principal, consult_id, body.text, getattr(request.state, "request_id", None)
        )
        audit.patients.add(f"Patient/{consult.patient_id}")
        audit.entities.append(f"DiagnosticReport/{consult.reply}")
    return JSONResponse(consult.json())
