"""ConsultService: open, read, reply to and end telemedicine consultations.

A requesting doctor who may read the patient now (``hub.access``) shares either everything
within a period or chosen results and studies (a report brings its results and study, a study
its reports) with one consultant, records the patient's consent, and sets when the grant ends
(at most ``MAX_DAYS``). The consultant then reads exactly that — in the workstation, through
FHIR and DICOMweb alike, since every read goes through the same access filter — until the
grant expires or the requester revokes it, and replies with a consult note.

FHIR resources are written as the organizations responsible for them (the request and the
consent by the requesting hospital, the reply by the consultant's), in one transaction with
the consult row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from hub.access.consents import is_opt_out
from hub.access.repository import AccessRepository
from hub.consults import documents
from hub.consults.repository import Consult, ConsultRepository, Person
from hub.fhir.outcomes import FhirError, forbidden, not_found
from hub.ingest.service import organization_principal
from hub.records.unit_of_work import UnitOfWork, unit_of_work
from hub.security.principals import ClientKind, Principal
from hub.storage.resources import WriteContext
from hub.storage.search_sql import PatientScope

if TYPE_CHECKING:
    from hub.runtime import Hub

MAX_DAYS = 30
SHAREABLE = frozenset({"Observation", "DiagnosticReport", "ImagingStudy"})


@dataclass(frozen=True)
class ConsultRequest:
    patient_id: str
    consultant: str  # client id: user:<username> or an API client
    question: str
    expires_at: datetime
    consent_method: str  # written, verbal, electronic
    consent_note: str = ""
    items: tuple[str, ...] | None = None  # Type/id
    period: tuple[datetime, datetime] | None = None


class ConsultService:
    def __init__(self, hub: Hub):
        self.hub = hub

    async def consultants(self) -> list[Person]:
        async with self.hub.database.connection() as connection:
            return await ConsultRepository(connection).consultants()

    async def open(
        self, principal: Principal, request: ConsultRequest, request_id: str | None = None
    ) -> Consult:
        if principal.kind != ClientKind.DOCTOR:
            raise forbidden("only a doctor can open a consultation")
        _require_text(
            request.question, request.consent_note, request.consultant, *request.items or ()
        )
        question = " ".join(request.question.split())
        if not question:
            raise FhirError(400, "required", "the consultation needs a question")
        if request.consent_method not in documents.CONSENT_METHODS:
            raise FhirError(
                400,
                "value",
                "consent method must be one of " + ", ".join(documents.CONSENT_METHODS),
            )
        now = datetime.now(UTC)
        if not now < request.expires_at <= now + timedelta(days=MAX_DAYS):
            raise FhirError(
                400, "value", f"the grant must end in the future, within {MAX_DAYS} days"
            )
        if (request.items is None) == (request.period is None):
            raise FhirError(400, "value", "share either a period or chosen results, not both")
        if request.period is not None and not request.period[0] < request.period[1]:
            raise FhirError(400, "value", "the shared period must start before it ends")
        if request.items is not None and not request.items:
            raise FhirError(400, "required", "choose at least one result or study to share")
        consult_id = uuid.uuid4()
        context = WriteContext(principal.client_id, principal.organization, request_id)
        async with unit_of_work(self.hub.database, transaction=True) as uow:
            connection = uow.connection
            repository = ConsultRepository(connection)
            consultant = await repository.person(request.consultant)
            if consultant is None or consultant.kind != "consultant":
                raise FhirError(400, "value", "the consultant is not a registered consultant")
            access = await self.hub.records.access.require_patient(
                connection, principal, request.patient_id
            )
            group = await AccessRepository(connection).group(request.patient_id)
            consents = await AccessRepository(connection).consents(group)
            if any(is_opt_out(content) for _, _, content in consents):
                raise FhirError(
                    409,
                    "business-rule",
                    "the patient has opted out of sharing their records; a consultation "
                    "cannot share them",
                )
            shared: list[str] | None = None
            if request.items is not None:
                shared = []
                of_person = replace(access.filter, scopes=(PatientScope(tuple(group)),))
                for key in request.items:
                    resource_type, _, resource_id = key.partition("/")
                    if resource_type not in SHAREABLE or not resource_id:
                        raise FhirError(400, "value", f"cannot share {key!r}")
                    # Readable by the doctor (any of their grants) and this person's own.
                    if not await self.hub.records.access.visible(
                        connection, access.filter, resource_type, resource_id
                    ) or not await self.hub.records.access.visible(
                        connection, of_person, resource_type, resource_id
                    ):
                        raise FhirError(404, "not-found", f"{key} is not in this record")
                    shared.append(key)
                shared += [k for k in await repository.related(shared, group) if k not in shared]
            writer = organization_principal(
                principal.organization, principal.client_id, principal.name
            )
            service_request = await self.hub.records.create(
                uow,
                writer,
                "ServiceRequest",
                documents.service_request(
                    str(consult_id),
                    request.patient_id,
                    (principal.organization, principal.name),
                    (consultant.organization, consultant.name),
                    question,
                    shared or [],
                    request.period,
                    now,
                    request.expires_at,
                ),
                context,
            )
            consent = await self.hub.records.create(
                uow,
                writer,
                "Consent",
                documents.consent(
                    str(consult_id),
                    request.patient_id,
                    principal.organization,
                    (consultant.organization, consultant.name),
                    request.consent_method,
                    " ".join(request.consent_note.split())[:500],
                    shared,
                    request.period,
                    now,
                    request.expires_at,
                ),
                context,
            )
            consult = Consult(
                consult_id,
                request.patient_id,
                principal.client_id,
                principal.name,
                principal.organization,
                consultant.id,
                consultant.name,
                consultant.organization,
                question,
                request.period[0] if request.period else None,
                request.period[1] if request.period else None,
                shared,
                service_request.stored.resource_id,
                consent.stored.resource_id,
                now,
                request.expires_at,
                None,
                None,
                None,
                None,
            )
            await repository.add(consult)
        return consult

    async def get(self, principal: Principal, consult_id: uuid.UUID) -> Consult:
        async with self.hub.database.connection() as connection:
            consult = await ConsultRepository(connection).get(consult_id)
        if consult is None or not _involved(principal, consult):
            raise not_found("Consult", str(consult_id))
        return consult

    async def involving(self, principal: Principal) -> list[Consult]:
        await self.settle()
        async with self.hub.database.connection() as connection:
            return await ConsultRepository(connection).involving(principal.client_id)

    async def revoke(self, principal: Principal, consult_id: uuid.UUID) -> Consult:
        consult = await self.get(principal, consult_id)
        if principal.client_id != consult.requester and principal.kind != ClientKind.ADMIN:
            raise forbidden("only the requesting doctor (or an admin) can revoke a consultation")
        if consult.status != "active":
            raise FhirError(409, "business-rule", f"the consultation is already {consult.status}")
        async with self.hub.database.connection() as connection:
            await ConsultRepository(connection).revoke(consult_id, principal.client_id)
        await self.settle()
        return await self.get(principal, consult_id)

    async def reply(
        self, principal: Principal, consult_id: uuid.UUID, text: str, request_id: str | None = None
    ) -> Consult:
        consult = await self.get(principal, consult_id)
        if principal.client_id != consult.consultant:
            raise forbidden("only the consultant can reply to a consultation")
        if consult.status != "active":
            raise FhirError(409, "business-rule", f"the consultation has {consult.status}")
        text = text.strip()
        if not text:
            raise FhirError(400, "required", "the reply is empty")
        _require_text(text)
        writer = organization_principal(consult.consultant_org, principal.client_id, principal.name)
        context = WriteContext(principal.client_id, consult.consultant_org, request_id)
        report = documents.reply(
            str(consult.id),
            consult.patient_id,
            consult.service_request,
            (consult.consultant_org, consult.consultant_name),
            text[:20000],
            datetime.now(UTC),
        )
        async with unit_of_work(self.hub.database, transaction=True) as uow:
            if consult.reply:  # a revised reply is a new version of the same report
                outcome = await self.hub.records.update(
                    uow,
                    writer,
                    "DiagnosticReport",
                    consult.reply,
                    report | {"id": consult.reply},
                    context,
                )
            else:
                outcome = await self.hub.records.create(
                    uow, writer, "DiagnosticReport", report, context
                )
            await ConsultRepository(uow.connection).set_reply(
                consult.id, outcome.stored.resource_id
            )
            await self.hub.records.update(
                uow,
                organization_principal(consult.requester_org, principal.client_id),
                "ServiceRequest",
                consult.service_request,
                await self._with_status(
                    uow, "ServiceRequest", consult.service_request, "completed"
                ),
                context,
            )
        return await self.get(principal, consult_id)

    async def settle(self) -> None:
        """Ended consultations' Consents become inactive (expiry itself is enforced by time)."""
        async with self.hub.database.connection() as connection:
            lapsed = await ConsultRepository(connection).lapsed_active_consents()
        for _, consent_id, organization in lapsed:
            async with unit_of_work(self.hub.database, transaction=True) as uow:
                body = await self._with_status(uow, "Consent", consent_id, "inactive")
                await self.hub.records.update(
                    uow,
                    organization_principal(organization, "hub:consults", "consultations"),
                    "Consent",
                    consent_id,
                    body,
                    WriteContext("hub:consults", organization, None),
                )

    @staticmethod
    async def _with_status(
        uow: UnitOfWork, resource_type: str, resource_id: str, status: str
    ) -> dict[str, Any]:
        stored = await uow.resources.current(resource_type, resource_id)
        if stored is None or stored.content is None:
            raise not_found(resource_type, resource_id)
        body: dict[str, Any] = orjson.loads(stored.content)
        body["status"] = status
        return body


def _require_text(*values: str) -> None:
    """400 for a control character (other than tab and line breaks) in text a consult writes
    into FHIR resources: a NUL there makes every JSON query over the resource fail."""
    for value in values:
        if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
            raise FhirError(400, "value", "the text contains a control character")


def _involved(principal: Principal, consult: Consult) -> bool:
    return principal.kind == ClientKind.ADMIN or principal.client_id in (
        consult.requester,
        consult.consultant,
    )
