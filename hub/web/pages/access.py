"""The admin's access pages: everything that happened to one person's record, and the
break-glass report.

``/ops/access?patient=`` answers a patient's inquiry ("who looked at my record?"): every audit
record naming any of the person's records — when, who (client or user, their kind and
organization), what (interaction, entities), the outcome and the purpose of use — with the
grants given on the person, and a CSV export. The patient is found by a Patient id or by an
identifier (``system|value``, or a bare resident ID card / insurance number) the way
``$ihe-pix`` resolves one. ``/ops/break-glass`` lists every emergency use, newest first.
Both read through ``AccessRepository`` and are themselves audited.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from hub.access.repository import AccessRepository
from hub.api.dependencies import audited
from hub.consults.repository import ConsultRepository
from hub.fhir.datetimes import zone
from hub.fhir.outcomes import FhirError
from hub.records.unit_of_work import unit_of_work
from hub.runtime import Hub
from hub.security.principals import ClientKind, Principal
from hub.web.dependencies import WebUser, require_role, web_hub
from hub.web.rendering import render

router = APIRouter()

Admin = Annotated[WebUser, Depends(require_role(ClientKind.ADMIN))]

LOG_LIMIT = 2000
BREAK_GLASS_LIMIT = 1000
# NamingSystem ids tried, in order, for an identifier typed without its system.
BARE_IDENTIFIER_SYSTEMS = ("resident-id", "insurance-person")
_PATIENT_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _local(moment: datetime | None, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def purpose_of(detail: str | None) -> str:
    """The purposes an audit record names (its detail ``purpose: care, consult``)."""
    if detail and detail.startswith("purpose: "):
        return detail.removeprefix("purpose: ")
    return ""


def is_break_glass(row: dict[str, Any]) -> bool:
    return "break-glass" in purpose_of(row.get("detail")) or row.get("interaction") == (
        "access:break-glass"
    )


def csv_response(filename: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Response:
    """A CSV download (UTF-8 with a byte order mark, so spreadsheet programs read Chinese)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return Response(
        "\ufeff" + buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
            "Cache-Control": "no-store",
        },
    )


async def _people(hub: Hub, client_ids: set[str]) -> dict[str, str]:
    """Display names of the clients and users in a log (those still registered)."""
    names: dict[str, str] = {}
    async with hub.database.connection() as connection:
        repository = ConsultRepository(connection)
        for client_id in sorted(client_ids):
            person = await repository.person(client_id)
            if person is not None:
                names[client_id] = person.name
    return names


async def find_person(hub: Hub, principal: Principal, text: str) -> tuple[str, list[str]] | None:
    """(the Patient id asked about, every record id of the person) for a Patient id or an
    identifier; None when nothing is found."""
    text = text.strip().removeprefix("Patient/")
    async with unit_of_work(hub.database, transaction=False) as uow:
        repository = AccessRepository(uow.connection)
        if "|" not in text and _PATIENT_ID.fullmatch(text):
            try:
                await hub.records.read(uow, principal, "Patient", text)
                return text, await repository.group(text)
            except FhirError as error:
                if error.status not in (404, 410):
                    raise
        candidates = [text] if "|" in text else []
        for key in BARE_IDENTIFIER_SYSTEMS if "|" not in text else ():
            try:
                candidates.append(hub.identity.systems.by_key(key).uri + "|" + text)
            except KeyError:
                continue
        for source in candidates:
            try:
                patient_ids, _ = await hub.identity.cross_reference(uow, source, [])
            except FhirError:
                continue  # not this system (a failed checksum, an unknown system)
            if patient_ids:
                first = sorted(patient_ids)[0]
                return first, await repository.group(first)
    return None


def _entities(row: dict[str, Any]) -> str:
    return " ".join(row.get("entities") or [])


@router.get("/ops/access")
async def patient_access(
    request: Request, user: Admin, patient: str = "", format: str = "html"
) -> Response:
    hub = web_hub(request)
    tz = zone(hub.settings.default_timezone)
    asked = patient.strip()
    if not asked:
        return render(request, "access/patient.html", asked="", found=None)
    async with audited(request, user.principal, "access:patient-log", "R") as audit:
        found = await find_person(hub, user.principal, asked)
        if found is None:
            audit.status = 404
            return render(request, "access/patient.html", 404, asked=asked, found=None)
        patient_id, ids = found
        audit.patients |= {f"Patient/{i}" for i in ids}
        async with hub.database.connection() as connection:
            repository = AccessRepository(connection)
            accesses = await repository.access_log(ids, LOG_LIMIT)
            grants = await repository.grants_of_person(patient_id)
    names = await _people(
        hub, {a["client_id"] for a in accesses if a["client_id"]} | {g["client_id"] for g in grants}
    )
    if format == "csv":
        return csv_response(
            f"access-log-Patient-{patient_id}.csv",
            (
                "recorded",
                "client_id",
                "name",
                "kind",
                "organization",
                "interaction",
                "action",
                "status",
                "purpose",
                "break_glass",
                "entities",
                "detail",
                "source_ip",
            ),
            (
                (
                    _local(a["recorded"], tz),
                    a["client_id"] or "",
                    names.get(a["client_id"] or "", ""),
                    a["client_kind"] or "",
                    a["organization"] or "",
                    a["interaction"],
                    a["action"],
                    a["status"],
                    purpose_of(a["detail"]),
                    "yes" if is_break_glass(a) else "",
                    _entities(a),
                    a["detail"] or "",
                    a["source_ip"] or "",
                )
                for a in accesses
            ),
        )
    return render(
        request,
        "access/patient.html",
        asked=asked,
        found=patient_id,
        records=ids,
        accesses=accesses,
        grants=grants,
        names=names,
        limit=LOG_LIMIT,
        local=lambda moment: _local(moment, tz),
        purpose_of=purpose_of,
        is_break_glass=is_break_glass,
    )


@router.get("/ops/break-glass")
async def break_glass(request: Request, user: Admin, format: str = "html") -> Response:
    hub = web_hub(request)
    tz = zone(hub.settings.default_timezone)
    async with audited(request, user.principal, "access:break-glass-report", "R") as audit:
        async with hub.database.connection() as connection:
            uses = await AccessRepository(connection).break_glass_uses(None, BREAK_GLASS_LIMIT)
        audit.patients |= {f"Patient/{u['patient_id']}" for u in uses}
    names = await _people(hub, {u["client_id"] for u in uses})
    if format == "csv":
        return csv_response(
            "break-glass.csv",
            (
                "created",
                "client_id",
                "name",
                "organization",
                "patient",
                "reason",
                "source",
                "until",
                "revoked",
            ),
            (
                (
                    _local(u["created_at"], tz),
                    u["client_id"],
                    names.get(u["client_id"], ""),
                    u["organization"],
                    f"Patient/{u['patient_id']}",
                    u["reason"] or "",
                    u["source"] or "",
                    _local(u["expires_at"], tz),
                    _local(u["revoked_at"], tz),
                )
                for u in uses
            ),
        )
    return render(
        request,
        "access/break_glass.html",
        uses=uses,
        names=names,
        limit=BREAK_GLASS_LIMIT,
        local=lambda moment: _local(moment, tz),
    )
