"""The doctor's workstation pages: patient search, the patient's timeline, trends, one result
(with the decision on a CDS card's reminder), the image viewer and the reuse check.

Each page acts as the signed-in doctor's Principal through the same services an API client
uses, so purpose of use (care, ordering, break-glass) decides what is shown and every read is
audited with its purpose. Unsafe requests are CSRF-checked by the web router.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response

from hub.api.dependencies import audited
from hub.api.fhir import redacted_query
from hub.fhir.outcomes import FhirError
from hub.recognition.catalogue import ITEM_SYSTEM
from hub.recognition.labels import label_context, label_result
from hub.recognition.repository import RecognitionRepository
from hub.recognition.rules import RequestedCode
from hub.recognition.service import CheckQuery, ReminderContext
from hub.records.unit_of_work import unit_of_work
from hub.security import policy
from hub.security.principals import ClientKind
from hub.web.charts import line_chart
from hub.web.dependencies import CurrentUser, WebUser, require_role, safe_next, web_hub
from hub.web.i18n import request_lang, translate
from hub.web.pages.auth import home_for
from hub.web.rendering import render
from hub.web.viewer import viewer_context
from hub.workstation.finder import (
    age_of,
    describe,
    find_people,
    is_master,
    load_json,
    masked_query,
    patient_name,
)
from hub.workstation.record import PatientRecord, load_record, organization_names
from hub.workstation.timeline import (
    KINDS,
    TimelineItem,
    build_timeline,
    by_date,
    page_of,
    reference_of,
    select,
)
from hub.workstation.trends import parse_code, trend

router = APIRouter()
Doctor = Annotated[WebUser, Depends(require_role(ClientKind.DOCTOR))]
# The viewer is also the consultant's: a study shared by a consultation opens in it.
Reader = Annotated[WebUser, Depends(require_role(ClientKind.DOCTOR, ClientKind.CONSULTANT))]
PAGE_SIZE = 30
RESULT_TYPES = ("Observation", "DiagnosticReport", "ImagingStudy")
MAX_ITEMS = 30


# -- finding a patient ---------------------------------------------------------------------------


@router.get("/")
async def search_page(request: Request, user: CurrentUser) -> Response:
    """The doctor's start page: one search box, for the keyboard or a scanner."""
    if user.role != ClientKind.DOCTOR:
        return RedirectResponse(home_for(str(user.role)), status_code=303)
    return render(request, "workstation/search.html", searched=False, hits=[], problems=[])


@router.post("/")
async def search(request: Request, user: Doctor, q: Annotated[str, Form()] = "") -> Response:
    """The people an identifier names. A POST, so that identifiers stay out of URLs (browser
    history, logs); the page does not echo the number typed, only its masked form."""
    hub = web_hub(request)
    principal = user.principal
    policy.require_identity(principal, "find")
    hits: list[Any] = []
    problems: list[str] = []
    names: dict[str, str] = {}
    if q.strip():
        query = redacted_query(hub, [("identifier", q)])
        async with (
            audited(request, principal, "workstation:search", "E", query) as audit,
            unit_of_work(hub.database, transaction=False) as uow,
        ):
            hits, problems = await find_people(uow, hub.identity, q, user.organization)
            for hit in hits:
                patients = []
                for record_id in hit.records:
                    stored = await uow.resources.current("Patient", record_id)
                    if stored is None or stored.deleted:
                        continue
                    hub.records.note(uow, stored)
                    patients.append(load_json(hub.records.present(principal, stored).content))
                describe(hit, patients, hub.identity.systems, user.organization)
                hit.patient_id = next(
                    (str(p["id"]) for p in patients if is_master(p)), hit.patient_id
                )
            organizations = sorted({o for h in hits for o in h.organizations})
            names = await organization_names(hub.records, uow, principal, organizations)
            audit.capture(uow)
    return render(
        request,
        "workstation/search.html",
        searched=bool(q.strip()),
        shown_query=masked_query(q, user.organization, hub.identity.systems),
        hits=hits,
        problems=problems,
        names=names,
    )


@router.post("/patients/{patient_id}/open")
async def open_patient(request: Request, patient_id: str, user: Doctor) -> Response:
    """Open a patient in the doctor's care (registered at the doctor's organization)."""
    hub = web_hub(request)
    async with (
        audited(request, user.principal, "workstation:open", "E") as audit,
        hub.database.connection() as connection,
    ):
        audit.patients.add(f"Patient/{patient_id}")
        try:
            await hub.records.access.open_care(
                connection, user.principal, patient_id, "workstation"
            )
        except FhirError as error:
            if error.status != 403:
                raise
            audit.status = 403
            return render(request, "workstation/refused.html", 403, patient_id=patient_id)
    return RedirectResponse(f"/patients/{patient_id}", status_code=303)


@router.post("/patients/{patient_id}/break-glass")
async def break_glass(
    request: Request, patient_id: str, user: Doctor, reason: Annotated[str, Form()] = ""
) -> Response:
    """Emergency access with a reason (at least 10 characters); flagged and reported."""
    hub = web_hub(request)
    async with (
        audited(request, user.principal, "workstation:break-glass", "E") as audit,
        hub.database.connection() as connection,
    ):
        audit.patients.add(f"Patient/{patient_id}")
        try:
            await hub.records.access.break_glass(
                connection, user.principal, patient_id, reason, "workstation"
            )
        except FhirError as error:
            if error.status != 400:
                raise
            audit.status = 400
            return render(
                request,
                "workstation/refused.html",
                400,
                patient_id=patient_id,
                reason=reason,
                reason_error=True,
            )
    return RedirectResponse(f"/patients/{patient_id}", status_code=303)


# -- the patient's record --------------------------------------------------------------------------


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _grants(access: Any, record: PatientRecord) -> list[Any]:
    """The purposes in force for this person, soonest-ending last."""
    ids = {str(p.get("id")) for p in record.patients} | {record.patient_id}
    grants = [g for g in access.grants if ids & set(g.patients)] if access else []
    return sorted(grants, key=lambda g: g.expires_at, reverse=True)


async def _read_record(
    request: Request, user: WebUser, patient_id: str, interaction: str
) -> tuple[PatientRecord, Any, Any]:
    """The person's record under the doctor's purposes (403 without one), audited; with the
    labelling context of the doctor's organization."""
    hub = web_hub(request)
    async with audited(request, user.principal, interaction, "R") as audit:
        async with unit_of_work(hub.database, transaction=False) as uow:
            access = await hub.records.access.require_patient(
                uow.connection, user.principal, patient_id
            )
            uow.access = access
            record = await load_record(hub.records, uow, user.principal, patient_id)
            missing = [o for o in _performers(record) if o not in record.organizations]
            record.organizations.update(
                await organization_names(hub.records, uow, user.principal, missing)
            )
            labels = await label_context(
                hub.recognition,
                RecognitionRepository(uow.connection),
                user.organization,
                datetime.now(UTC),
            )
        audit.capture(uow)
    return record, access, labels


def _performers(record: PatientRecord) -> list[str]:
    found = set(record.owners.values())
    for patient in record.patients:
        managing = (patient.get("managingOrganization") or {}).get("reference") or ""
        if managing.startswith("Organization/"):
            found.add(managing.split("/", 1)[1])
    for resource in record.results:
        for reference in resource.get("performer") or []:
            text = (reference or {}).get("reference") or ""
            if text.startswith("Organization/"):
                found.add(text.split("/", 1)[1])
    return sorted(found)


def _header(request: Request, record: PatientRecord, access: Any) -> dict[str, Any]:
    hub = web_hub(request)
    master = record.master
    hit_identifiers: list[tuple[str, str]] = []
    registered: list[str] = []
    seen = set()
    for patient in record.patients:
        for identifier in patient.get("identifier") or []:
            if not isinstance(identifier, dict) or not identifier.get("value"):
                continue
            system = str(identifier.get("system") or "")
            found = hub.identity.systems.lookup(system)
            label = found.name_zh if found else system
            value = hub.identity.systems.mask(system, str(identifier["value"]))
            if (label, value) not in seen:
                seen.add((label, value))
                hit_identifiers.append((label, value))
        managing = (patient.get("managingOrganization") or {}).get("reference") or ""
        if managing.startswith("Organization/") and not is_master(patient):
            name = record.organization_name(managing.split("/", 1)[1])
            if name not in registered:
                registered.append(name)
    grants = _grants(access, record)
    return {
        "patient": master,
        "name": _name(master),
        "age": age_of(str(master.get("birthDate") or "")),
        "identifiers": hit_identifiers,
        "registered": registered,
        "grants": grants,
        "break_glass": any(g.purpose == "break-glass" for g in grants),
    }


def _name(patient: dict[str, Any]) -> str:
    return patient_name(patient)


def _label(labels: Any, items: list[TimelineItem]) -> None:
    for item in items:
        item.label = label_result(labels, item.resources)


@router.get("/patients/{patient_id}")
async def patient_page(
    request: Request,
    patient_id: str,
    user: Doctor,
    kind: str = "",
    start: Annotated[str, Query(alias="from")] = "",
    end: Annotated[str, Query(alias="to")] = "",
    page: int = 1,
) -> Response:
    """The header and the timeline of every result from every hospital."""
    hub = web_hub(request)
    zone = hub.recognition.zone
    record, access, labels = await _read_record(request, user, patient_id, "workstation:patient")
    items = build_timeline(record.results, zone, record.owners)
    chosen = select(items, kind or None, _day(start), _day(end), zone)
    shown = page_of(chosen, page, PAGE_SIZE)
    _label(labels, shown.items)
    async with hub.database.connection() as connection:
        catalogue = await hub.recognition.catalogue(RecognitionRepository(connection))
    return render(
        request,
        "workstation/patient.html",
        patient_id=patient_id,
        record=record,
        groups=by_date(shown.items, zone),
        shown=shown,
        kind=kind if kind in KINDS else "",
        start=start,
        end=end,
        zone=zone,
        catalogue=list(catalogue.items.values()),
        dicomweb_token=_thumbnail_token(request, user, shown.items),
        **_header(request, record, access),
    )


@router.get("/patients/{patient_id}/trend")
async def trend_page(request: Request, patient_id: str, user: Doctor, code: str = "") -> Response:
    """One value over time: an SVG chart with the reference band and flagged points, and a
    table."""
    hub = web_hub(request)
    zone = hub.recognition.zone
    record, access, _ = await _read_record(request, user, patient_id, "workstation:trend")
    wanted = parse_code(code)
    points = trend(record.results, wanted, zone) if wanted else []
    latest = points[-1].value if points else None
    lang = request_lang(request)
    title = latest.name if latest else wanted
    chart = line_chart(
        [(p.at, p.value.numeric or 0.0, bool(p.value.flag)) for p in points],
        low=latest.low if latest else None,
        high=latest.high if latest else None,
        unit=latest.unit if latest else "",
        title=title,
        empty_text=translate("无数据", lang),
    )
    return render(
        request,
        "workstation/trend.html",
        patient_id=patient_id,
        record=record,
        code=wanted,
        title=title,
        points=list(reversed(points)),
        chart=chart,
        zone=zone,
        **_header(request, record, access),
    )


# -- one result ----------------------------------------------------------------------------------


@router.get("/results/{resource_type}/{resource_id}")
async def result_page(
    request: Request,
    resource_type: str,
    resource_id: str,
    user: Doctor,
    reminder: uuid.UUID | None = None,
) -> Response:
    """One result in full; with ``reminder`` (a CDS card's link), the order in progress is
    the purpose of use, and the decision panel is shown."""
    if resource_type not in RESULT_TYPES:
        raise HTTPException(404, "没有这种结果。")
    hub = web_hub(request)
    principal = user.principal
    found_reminder: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = []
    async with audited(request, principal, "workstation:result", "R") as audit:
        async with unit_of_work(hub.database, transaction=False) as uow:
            if reminder is not None:
                repo = RecognitionRepository(uow.connection)
                found_reminder = await hub.recognition.reminder(repo, reminder, user.organization)
                await hub.records.access.ordering(
                    uow.connection, principal, found_reminder["patient_id"], "card-link"
                )
                decisions = await repo.decisions(reminder)
            stored = await hub.records.read(uow, principal, resource_type, resource_id)
            hub.records.note(uow, stored)
        audit.capture(uow)
    resource = load_json(stored.content)
    subject = ((resource.get("subject") or {}).get("reference") or "").rpartition("/")[2]
    if not subject:
        raise HTTPException(404, "该结果没有关联患者。")
    zone = hub.recognition.zone
    record, access, labels = await _read_record(request, user, subject, "workstation:result")
    ref = f"{resource_type}/{resource_id}"
    items = build_timeline(record.results, zone, record.owners)
    item = next((i for i in items if i.ref == ref), None) or next(
        (i for i in items if ref in {reference_of(r) for r in i.resources}), None
    )
    if item is None:
        raise HTTPException(404, "未找到该结果。")
    _label(labels, [item])
    related = [
        i
        for i in items
        if i is not item and (i.ref in (item.study_ref, item.report_ref) or i.study_ref == item.ref)
    ]
    _label(labels, related)
    return render(
        request,
        "workstation/result.html",
        patient_id=subject,
        record=record,
        item=item,
        related=related,
        zone=zone,
        reminder=found_reminder,
        decisions=decisions,
        reasons=_reasons(request),
        dicomweb_token=_thumbnail_token(request, user, [item, *related]),
        **_header(request, record, access),
    )


def _thumbnail_token(request: Request, user: WebUser, items: list[TimelineItem]) -> str | None:
    """A short-lived bearer token for the thumbnails' DICOMweb requests, when there are any
    (the same principal, so DICOMweb applies the same purposes)."""
    if not any(i.study_uid and i.series for i in items if i.kind == "imaging"):
        return None
    return web_hub(request).tokens.issue(user.principal)[0]


def _reasons(request: Request) -> list[tuple[str, str]]:
    """The coded decline reasons, in the page's language."""
    english = request_lang(request) == "en"
    out = []
    for code, concept in web_hub(request).recognition.decline_reasons.items():
        chinese = next(
            (d.get("value") for d in concept.get("designation") or [] if d.get("value")),
            concept.get("display"),
        )
        out.append((code, str(concept.get("display") if english else chinese)))
    return out


# -- the image viewer ----------------------------------------------------------------------------


@router.get("/viewer/studies/{study_uid}")
async def viewer_page(request: Request, study_uid: str, user: Reader, back: str = "") -> Response:
    """The viewer, only for a study the doctor's purposes (or the consultant's consultations)
    cover (else 404); ``back``: the local page the back link returns to."""
    hub = web_hub(request)
    principal = user.principal
    async with audited(request, principal, "workstation:viewer", "R") as audit:
        async with unit_of_work(hub.database, transaction=False) as uow:
            found = await hub.records.search(
                uow,
                principal,
                "ImagingStudy",
                [("identifier", f"urn:dicom:uid|urn:oid:{study_uid}")],
                False,
            )
        audit.capture(uow)
    if not found.page.rows:
        raise HTTPException(404, "未找到该影像检查，或您当前无权查看。")
    study = load_json(found.page.rows[0].content)
    subject = ((study.get("subject") or {}).get("reference") or "").rpartition("/")[2]
    token = hub.tokens.issue(principal)[0]
    if user.role == ClientKind.CONSULTANT:
        back_url = "/consults"
    else:
        back_url = f"/patients/{subject}" if subject else "/"
    if back and safe_next(back) == back:
        back_url = back
    context = viewer_context(study_uid, "/dicomweb", token, request_lang(request), back_url)
    return render(request, "viewer.html", **context)


# -- the reuse check -----------------------------------------------------------------------------


@router.post("/patients/{patient_id}/reuse-check")
async def reuse_check(
    request: Request,
    patient_id: str,
    user: Doctor,
    item: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """The doctor's planned orders through the same check as CDS Hooks; a reminder is
    recorded for each reusable result."""
    hub = web_hub(request)
    principal = user.principal
    wanted = [i for i in dict.fromkeys(item or []) if i][:MAX_ITEMS]
    if not wanted:
        raise HTTPException(400, "请至少选择一个拟开立的检查检验项目。")
    async with (
        audited(request, principal, "recognition:check", "E") as audit,
        hub.database.connection(generic_plans=True) as connection,
        connection.transaction(),
    ):
        await hub.records.access.require_patient(connection, principal, patient_id)
        repo = RecognitionRepository(connection)
        check = await hub.recognition.check(
            repo,
            CheckQuery(
                [RequestedCode(ITEM_SYSTEM, i) for i in wanted], user.organization, [patient_id]
            ),
        )
        audit.patients |= {f"Patient/{p}" for p in check.person.patients}
        await hub.recognition.record(
            repo,
            check,
            ReminderContext(
                "workstation",
                client_id=principal.client_id,
                practitioner=user.display_name[:200],
                hook="workstation",
            ),
        )
        audit.entities += [
            v.result.primary.reference for v in check.verdicts if v.reusable and v.result
        ]
        organizations = {
            o.id: o.name for o in (v.institution for v in check.verdicts) if o is not None
        }
    rows = [
        {"verdict": v, "reminder": check.reminders.get(index)}
        for index, v in enumerate(check.verdicts)
    ]
    template = (
        "workstation/_reuse_results.html"
        if request.headers.get("hx-request")
        else "workstation/reuse.html"
    )
    return render(
        request,
        template,
        patient_id=patient_id,
        rows=rows,
        organizations=organizations,
        zone=hub.recognition.zone,
        reasons=_reasons(request),
    )


@router.post("/reminders/{reminder_id}/decision")
async def decide(
    request: Request,
    reminder_id: uuid.UUID,
    user: Doctor,
    outcome: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    reason_text: Annotated[str, Form()] = "",
) -> Response:
    """Accept (互认, do not repeat) or decline with a coded reason: the same decision record
    as CDS feedback."""
    hub = web_hub(request)
    principal = user.principal
    async with (
        audited(request, principal, "recognition:decide", "U") as audit,
        hub.database.connection() as connection,
    ):
        repo = RecognitionRepository(connection)
        decision, found = await hub.recognition.decide(
            repo,
            reminder_id,
            outcome=outcome,
            reason_code=reason or None,
            reason_text=reason_text or None,
            source="workstation",
            decided_by=user.display_name[:200],
            client_id=principal.client_id,
            organization=user.organization,
        )
        audit.patients.add(f"Patient/{found['patient_id']}")
        audit.entities.append(found["result_ref"])
    if not request.headers.get("hx-request"):
        return RedirectResponse(
            f"/results/{found['result_ref']}?reminder={reminder_id}", status_code=303
        )
    return render(
        request,
        "workstation/_decision.html",
        decision=decision,
        reasons=dict(_reasons(request)),
    )
