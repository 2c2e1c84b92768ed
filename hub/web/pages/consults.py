"""Consultation pages: the list, the doctor's form to open one, and the consult itself.

Every read and write goes through ``ConsultService`` and ``RecordService`` with the signed-in
user's principal, so the same purpose-of-use rules and audit records apply as to an API
client: the doctor's form lists only the results the doctor may read now, and the consultant's
page shows exactly what ``Patient/$everything`` returns for their principal — the consult's
scope, and nothing once the grant has expired or been revoked.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import RedirectResponse, Response

from hub.api.dependencies import audited
from hub.consults.documents import CONSENT_METHODS
from hub.consults.repository import Consult
from hub.consults.service import MAX_DAYS, ConsultRequest
from hub.fhir.datetimes import zone
from hub.fhir.outcomes import FhirError
from hub.records.unit_of_work import unit_of_work
from hub.runtime import Hub
from hub.security.principals import ClientKind, Principal
from hub.web.consult_record import RecordView, masked_name, patient_header, record_view
from hub.web.dependencies import WebUser, require_role, web_hub
from hub.web.i18n import request_lang
from hub.web.rendering import render

router = APIRouter()

Participant = Annotated[WebUser, Depends(require_role(ClientKind.DOCTOR, ClientKind.CONSULTANT))]
Doctor = Annotated[WebUser, Depends(require_role(ClientKind.DOCTOR))]

SHAREABLE_TYPES = "Observation,DiagnosticReport,ImagingStudy"
EXPIRY_CHOICES = (24, 72, 168, 336, 24 * MAX_DAYS)  # hours; 72 h is the default
DEFAULT_EXPIRY_HOURS = 72
MAX_LISTED = 500  # results offered on the form


def local_zone(hub: Hub) -> tzinfo:
    return zone(hub.settings.default_timezone)


def display_status(consult: Consult) -> str:
    """active, replied, expired or revoked: what a list shows (a reply keeps the grant)."""
    status = consult.status
    if status == "active" and consult.reply:
        return "replied"
    return status


def time_left(consult: Consult, lang: str, now: datetime | None = None) -> str:
    """What remains of an active grant, in days and hours (or hours and minutes)."""
    if consult.status != "active":
        return ""
    left = consult.expires_at - (now or datetime.now(UTC))
    minutes = max(int(left.total_seconds() // 60), 0)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if lang == "en":
        return f"{days} d {hours} h" if days else f"{hours} h {minutes} min"
    return f"{days} 天 {hours} 小时" if days else f"{hours} 小时 {minutes} 分"


def shared_period(consult: Consult, tz: tzinfo) -> tuple[str, str] | None:
    """The shared period as local dates, its end inclusive (the form stores the midnight
    after the last day)."""
    if consult.period_start is None or consult.period_end is None:
        return None
    start = consult.period_start.astimezone(tz)
    end = consult.period_end.astimezone(tz)
    if end.time() == time.min and end.date() > start.date():
        end -= timedelta(days=1)
    return start.date().isoformat(), end.date().isoformat()


@dataclass(frozen=True)
class ConsultLine:
    """One consult in the list, as the signed-in user sees it."""

    consult: Consult
    mine: bool  # the user requested it (else it was asked of them)
    status: str
    left: str
    patient: str  # masked name, or the record id when the user may not read the patient


async def _patient_names(
    request: Request, hub: Hub, principal: Principal, patient_ids: list[str]
) -> dict[str, str]:
    """Masked names of the patients the user may read now (one audited search)."""
    if not patient_ids:
        return {}
    names: dict[str, str] = {}
    async with audited(request, principal, "consult:list", "R") as audit:
        async with unit_of_work(hub.database, transaction=False) as uow:
            try:
                result = await hub.records.search(
                    uow,
                    principal,
                    "Patient",
                    [("_id", ",".join(sorted(set(patient_ids)))), ("_count", "200")],
                    False,
                )
            except FhirError as error:
                if error.status not in (403, 404):
                    raise
                return {}
            for stored in result.page.rows:
                if stored.content:
                    header = patient_header(stored.resource_id, orjson.loads(stored.content))
                    names[stored.resource_id] = masked_name(header.name)
        audit.capture(uow)
    return names


@router.get("/consults")
async def consult_list(request: Request, user: Participant) -> Response:
    hub = web_hub(request)
    consults = await hub.consults.involving(user.principal)
    lang = request_lang(request)
    names = await _patient_names(request, hub, user.principal, [c.patient_id for c in consults])
    lines = [
        ConsultLine(
            c,
            c.requester == user.principal.client_id,
            display_status(c),
            time_left(c, lang),
            names.get(c.patient_id) or f"Patient/{c.patient_id}",
        )
        for c in consults
    ]
    return render(
        request,
        "consults/list.html",
        requested=[line for line in lines if line.mine],
        asked=[line for line in lines if not line.mine],
        zone=local_zone(hub),
    )


# -- opening a consultation -----------------------------------------------------------------


async def _ensure_purpose(
    request: Request, hub: Hub, principal: Principal, patient_id: str
) -> None:
    """The doctor may read the patient now: a grant in force, or the patient is registered at
    the doctor's organization (care, as when the workstation opens a patient); else 403."""
    access = hub.records.access
    async with hub.database.connection() as connection:
        try:
            await access.require_patient(connection, principal, patient_id)
            return
        except FhirError as error:
            if error.status != 403:
                raise
    async with (
        audited(request, principal, "access:care", "E") as audit,
        hub.database.connection() as connection,
    ):
        audit.patients.add(f"Patient/{patient_id}")
        grant = await access.open_care(connection, principal, patient_id, "web:consult")
        audit.entities.append(f"urn:uuid:{grant.id}")


async def _shareable(
    request: Request, hub: Hub, principal: Principal, patient_id: str
) -> RecordView:
    """The patient's results, studies and reports the doctor may read (audited)."""
    await _ensure_purpose(request, hub, principal, patient_id)
    async with audited(request, principal, "consult:choose", "R") as audit:
        async with unit_of_work(hub.database, transaction=False) as uow:
            page, referenced = await hub.records.everything(
                uow,
                principal,
                patient_id,
                {"_type": "Patient," + SHAREABLE_TYPES, "_count": str(MAX_LISTED)},
                hub.settings.search_default_count,
            )
        audit.capture(uow)
    return record_view(page.rows + referenced, patient_id)


def _form_defaults() -> dict[str, Any]:
    return {
        "consultant": "",
        "question": "",
        "share": "items",
        "items": [],
        "period_start": "",
        "period_end": "",
        "consent_method": "written",
        "consent_note": "",
        "expiry_hours": DEFAULT_EXPIRY_HOURS,
    }


async def _render_form(
    request: Request,
    hub: Hub,
    user: WebUser,
    patient_id: str,
    form: dict[str, Any],
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    record = await _shareable(request, hub, user.principal, patient_id)
    return render(
        request,
        "consults/new.html",
        status_code,
        patient_id=patient_id,
        record=record,
        consultants=await hub.consults.consultants(),
        consent_methods=CONSENT_METHODS,
        expiry_choices=EXPIRY_CHOICES,
        form=form,
        error=error,
        today=datetime.now(local_zone(hub)).date().isoformat(),
    )


@router.get("/consults/new")
async def new_consult(request: Request, user: Doctor, patient: str = "") -> Response:
    patient_id = patient.strip().removeprefix("Patient/")
    if not patient_id:
        raise FhirError(400, "required", "请从患者页面发起会诊（缺少患者）。")
    return await _render_form(request, web_hub(request), user, patient_id, _form_defaults())


def _parse_date(value: str, invalid: str) -> date:
    """The form's date; a 400 saying ``invalid`` (the template translates it) otherwise."""
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise FhirError(400, "value", invalid) from None


def _consult_request(form: dict[str, Any], patient_id: str, tz: tzinfo) -> ConsultRequest:
    """The service's request from the submitted form (400 for what the form itself checks)."""
    if not form["consultant"]:
        raise FhirError(400, "required", "请选择会诊专家。")
    if not form["consent_confirmed"]:
        raise FhirError(400, "required", "请确认患者已知情同意。")
    try:
        hours = int(form["expiry_hours"])
    except (TypeError, ValueError):
        raise FhirError(400, "value", "授权期限无效。") from None
    if not 0 < hours <= 24 * MAX_DAYS:
        raise FhirError(400, "value", "授权期限最长 30 天。")
    items: tuple[str, ...] | None = None
    period: tuple[datetime, datetime] | None = None
    if form["share"] == "period":
        start = _parse_date(form["period_start"], "开始日期无效。")
        end = _parse_date(form["period_end"], "结束日期无效。")
        if end < start:
            raise FhirError(400, "value", "共享期间的结束日期早于开始日期。")
        period = (
            datetime.combine(start, time.min, tz),
            datetime.combine(end + timedelta(days=1), time.min, tz),
        )
    else:
        items = tuple(form["items"])
        if not items:
            raise FhirError(400, "required", "请至少选择一项要共享的结果或检查。")
    return ConsultRequest(
        patient_id,
        form["consultant"],
        form["question"],
        datetime.now(UTC) + timedelta(hours=hours),
        form["consent_method"],
        form["consent_note"],
        items,
        period,
    )


@router.post("/consults/new")
async def open_consult(request: Request, user: Doctor) -> Response:
    hub = web_hub(request)
    submitted = await request.form()
    patient_id = str(submitted.get("patient") or "").strip()
    if not patient_id:
        raise FhirError(400, "required", "请从患者页面发起会诊（缺少患者）。")
    form = _form_defaults() | {
        name: str(submitted.get(name) or "").strip()
        for name in (
            "consultant",
            "question",
            "share",
            "period_start",
            "period_end",
            "consent_method",
            "consent_note",
            "expiry_hours",
        )
    }
    form["items"] = [str(v) for v in submitted.getlist("items")]
    form["consent_confirmed"] = submitted.get("consent_confirmed") == "yes"
    try:
        consult_request = _consult_request(form, patient_id, local_zone(hub))
        async with audited(request, user.principal, "consult:open", "C") as audit:
            audit.patients.add(f"Patient/{patient_id}")
            consult = await hub.consults.open(
                user.principal, consult_request, getattr(request.state, "request_id", None)
            )
            audit.entities += [
                f"ServiceRequest/{consult.service_request}",
                f"Consent/{consult.consent}",
            ]
    except FhirError as error:
        if error.status not in (400, 404, 409):
            raise
        return await _render_form(
            request, hub, user, patient_id, form, error.diagnostics, error.status
        )
    return RedirectResponse(f"/consults/{consult.id}", status_code=303)


# -- one consultation -------------------------------------------------------------------------


def _consult_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise FhirError(404, "not-found", "没有这个会诊。") from None


async def _shared_record(
    request: Request, hub: Hub, principal: Principal, consult: Consult
) -> RecordView | None:
    """What the consultant may see of the record now (None when the grant gives nothing:
    ended, or suspended by the patient's opt-out)."""
    if consult.status != "active":
        return None
    try:
        async with audited(request, principal, "operation:everything", "R") as audit:
            async with unit_of_work(hub.database, transaction=False) as uow:
                page, referenced = await hub.records.everything(
                    uow,
                    principal,
                    consult.patient_id,
                    {"_count": str(MAX_LISTED)},
                    hub.settings.search_default_count,
                )
            audit.capture(uow)
    except FhirError as error:
        if error.status in (403, 404):
            return None
        raise
    return record_view(page.rows + referenced, consult.patient_id)


async def _reply_text(
    request: Request, hub: Hub, principal: Principal, consult: Consult
) -> str | None:
    """The consult note's text, if the user may read it now (None otherwise)."""
    if not consult.reply:
        return None
    try:
        async with audited(request, principal, "read", "R") as audit:
            async with unit_of_work(hub.database, transaction=False) as uow:
                stored = await hub.records.read(uow, principal, "DiagnosticReport", consult.reply)
            audit.capture(uow)
    except FhirError as error:
        if error.status in (403, 404):
            return None
        raise
    if not stored.content:
        return None
    return str(orjson.loads(stored.content).get("conclusion") or "")


@router.get("/consults/{consult_id}")
async def consult_page(consult_id: str, request: Request, user: Participant) -> Response:
    hub = web_hub(request)
    consult = await hub.consults.get(user.principal, _consult_id(consult_id))
    is_requester = consult.requester == user.principal.client_id
    is_consultant = consult.consultant == user.principal.client_id
    record = None
    if is_consultant:
        record = await _shared_record(request, hub, user.principal, consult)
    if is_requester and consult.reply:
        try:  # reading the note is reading the patient's record: the care purpose, if any
            await _ensure_purpose(request, hub, user.principal, consult.patient_id)
        except FhirError as error:
            if error.status != 403:
                raise
    reply = await _reply_text(request, hub, user.principal, consult)
    lang = request_lang(request)
    return render(
        request,
        "consults/detail.html",
        consult=consult,
        status=display_status(consult),
        left=time_left(consult, lang),
        is_requester=is_requester,
        is_consultant=is_consultant,
        record=record,
        reply=reply,
        zone=local_zone(hub),
        period=shared_period(consult, local_zone(hub)),
        notice=request.query_params.get("notice"),
    )


@router.post("/consults/{consult_id}/reply")
async def reply_consult(consult_id: str, request: Request, user: Participant) -> Response:
    hub = web_hub(request)
    text = str((await request.form()).get("text") or "")
    the_id = _consult_id(consult_id)
    async with audited(request, user.principal, "consult:reply", "C") as audit:
        consult = await hub.consults.reply(
            user.principal, the_id, text, getattr(request.state, "request_id", None)
        )
        audit.patients.add(f"Patient/{consult.patient_id}")
        audit.entities.append(f"DiagnosticReport/{consult.reply}")
    return RedirectResponse(f"/consults/{consult.id}?notice=replied", status_code=303)


@router.post("/consults/{consult_id}/revoke")
async def revoke_consult(consult_id: str, request: Request, user: Participant) -> Response:
    hub = web_hub(request)
    the_id = _consult_id(consult_id)
    async with audited(request, user.principal, "consult:revoke", "U") as audit:
        consult = await hub.consults.revoke(user.principal, the_id)
        audit.patients.add(f"Patient/{consult.patient_id}")
        audit.entities.append(f"ServiceRequest/{consult.service_request}")
    return RedirectResponse(f"/consults/{consult.id}?notice=revoked", status_code=303)
