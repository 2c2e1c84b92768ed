"""AccessService: a caller's purposes of use, and the row filter they allow.

Hospitals and admins keep the policy's fixed rules (a hospital reads what it sent; an operator
reads everything, audited). Doctors and consultants read clinical data only inside a live grant:

* ``care`` — the doctor opened a patient registered at their own organization (workstation, or
  ``POST /access/grants`` with purpose TREAT);
* ``ordering`` — an order is being placed for the patient (a CDS Hooks call, the card link);
* ``launch`` — an EHR launched the workstation on the patient (SMART EHR launch);
* ``break-glass`` — an emergency, with a reason; every use is logged, counted and listed for
  the operator;
* ``consult`` — a consultation names this consultant; only what it shared, until it ends.

A patient's opt-out Consent narrows a doctor's grant to their own organization's records and
suspends consultations. The result is an ``AccessFilter`` with one ``PatientScope`` per grant.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import Counter

from hub.access.consents import is_opt_out
from hub.access.repository import AccessRepository, LiveGrant
from hub.fhir.outcomes import FhirError, forbidden
from hub.security import policy
from hub.security.principals import ClientKind, Principal
from hub.storage.search_sql import AccessFilter, PatientScope

log = logging.getLogger(__name__)

BREAK_GLASS = Counter(
    "yijian_break_glass_total", "Emergency (break-glass) access grants", ["organization"]
)
SCOPED_KINDS = frozenset({ClientKind.DOCTOR, ClientKind.CONSULTANT})
# HL7 v3 PurposeOfUse codes for each purpose (audit and the API).
PURPOSE_OF_USE = {
    "care": "TREAT",
    "ordering": "TREAT",
    "launch": "TREAT",
    "consult": "TREAT",
    "break-glass": "ETREAT",
}
MIN_REASON = 10


@dataclass(frozen=True)
class Lifetimes:
    """How long each purpose lasts once established."""

    care: timedelta = timedelta(hours=8)
    ordering: timedelta = timedelta(hours=2)
    launch: timedelta = timedelta(hours=8)
    break_glass: timedelta = timedelta(hours=1)

    def of(self, purpose: str) -> timedelta:
        return {
            "care": self.care,
            "ordering": self.ordering,
            "launch": self.launch,
            "break-glass": self.break_glass,
        }[purpose]


@dataclass(frozen=True)
class Grant:
    id: uuid.UUID
    purpose: str
    patient_id: str
    expires_at: datetime


@dataclass
class Access:
    """A caller's live grants and the filter they make (computed once per unit of work)."""

    filter: AccessFilter
    grants: list[LiveGrant]
    opted_out: frozenset[str]  # record ids of persons who opted out

    def purposes(self, patients: set[str]) -> list[str]:
        """The purposes under which these ``Patient/id`` references are being read."""
        ids = {p.removeprefix("Patient/") for p in patients}
        return sorted({g.purpose for g in self.grants if ids & set(g.patients)})


@dataclass(frozen=True)
class Established:
    """The purpose a request established for itself (an order's reuse check reads the
    record under ``ordering``): what its audit record names, like ``Access.purposes``."""

    purpose: str

    def purposes(self, patients: set[str]) -> list[str]:
        return [self.purpose]


class AccessService:
    def __init__(self, members: list[tuple[str, str]], dates: dict[str, str], lifetimes: Lifetimes):
        self.members = tuple(members)
        self.dates = tuple(dates.items())
        self.lifetimes = lifetimes

    # -- the filter -----------------------------------------------------------------------

    async def access(self, connection: asyncpg.Connection, principal: Principal) -> Access:
        """What ``principal`` may read now, as a row filter (one or two statements)."""
        base = policy.read_filter(principal)
        if principal.kind not in SCOPED_KINDS:
            return Access(base, [], frozenset())
        repository = AccessRepository(connection)
        grants = await repository.live(principal.client_id)
        if principal.patient is not None:  # a SMART patient-level token: that patient only
            grants = [g for g in grants if principal.patient in g.patients]
        opted_out: set[str] = set()
        if grants:
            ids = sorted({i for g in grants for i in g.patients})
            for _, patient_id, content in await repository.consents(ids):
                if is_opt_out(content):
                    opted_out |= {i for g in grants if patient_id in g.patients for i in g.patients}
        scopes = []
        for grant in grants:
            person_opted_out = bool(opted_out & set(grant.patients))
            if grant.source == "consult":
                if person_opted_out:
                    continue  # an opt-out suspends every consultation
                if grant.items is not None:
                    scopes.append(PatientScope(grant.patients, grant.items + grant.own))
                else:
                    scopes.append(PatientScope(grant.patients, period=grant.period))
                    if grant.own:
                        scopes.append(PatientScope(grant.patients, grant.own))
            else:
                own = (principal.organization,) if person_opted_out else None
                scopes.append(PatientScope(grant.patients, organizations=own))
        access_filter = replace(
            base,
            scopes=tuple(scopes),
            patient_types=policy.CLINICAL,
            members=self.members,
            dates=self.dates,
        )
        return Access(access_filter, grants, frozenset(opted_out))

    async def visible(
        self,
        connection: asyncpg.Connection,
        access: AccessFilter,
        resource_type: str,
        resource_id: str,
    ) -> bool:
        """Whether the current row of ``resource_type/resource_id`` passes ``access``."""
        from hub.storage.search_sql import Sql

        sql = Sql()
        where = access.sql(sql, "r")
        query = (
            f"SELECT EXISTS (SELECT 1 FROM resource r WHERE r.res_type = "
            f"{sql.add(resource_type)} AND r.res_id = {sql.add(resource_id)} AND {where})"
        )
        return bool(await connection.fetchval(query, *sql.params))

    # -- establishing a purpose -----------------------------------------------------------

    async def open_care(
        self, connection: asyncpg.Connection, principal: Principal, patient_id: str, source: str
    ) -> Grant:
        """The patient is in the doctor's care: registered at the doctor's organization."""
        self._require_doctor(principal)
        repository = AccessRepository(connection)
        if not await repository.in_care(patient_id, principal.organization):
            raise forbidden(
                "the patient is not registered at your organization: open them from an order "
                "(CDS card, EHR launch) or use emergency access (break-glass) with a reason"
            )
        return await self._grant(connection, principal, patient_id, "care", None, source)

    async def ordering(
        self, connection: asyncpg.Connection, principal: Principal, patient_id: str, source: str
    ) -> Grant:
        """An order is being placed for the patient (CDS Hooks, a card link)."""
        return await self._grant(connection, principal, patient_id, "ordering", None, source)

    async def order_placed(
        self,
        connection: asyncpg.Connection,
        principal: Principal,
        patient_ids: list[str],
        source: str,
    ) -> bool:
        """An EHR's reuse check before an order (CDS Hooks, ``$reusable-results``): the ordering
        purpose for that EHR's doctor client. Only registered systems establish it this way —
        the hub trusts an EHR to ask for the orders it is placing; a person (a workstation user
        or an app acting as one) gets it from an order of their hospital (the card link) or
        opens the patient in their care. Whether a grant was made."""
        if principal.kind != ClientKind.DOCTOR or principal.is_person or not patient_ids:
            return False
        await self.ordering(connection, principal, patient_ids[0], source)
        return True

    async def launch(
        self, connection: asyncpg.Connection, principal: Principal, patient_id: str, source: str
    ) -> Grant:
        """An EHR launched the workstation with this patient in context."""
        self._require_doctor(principal)
        return await self._grant(connection, principal, patient_id, "launch", None, source)

    async def break_glass(
        self,
        connection: asyncpg.Connection,
        principal: Principal,
        patient_id: str,
        reason: str,
        source: str,
    ) -> Grant:
        """Emergency access: any patient, for a short time, with a reason; always reported."""
        self._require_doctor(principal)
        reason = " ".join((reason or "").split())
        if len(reason) < MIN_REASON:
            raise FhirError(
                400,
                "required",
                f"emergency access needs a reason of at least {MIN_REASON} characters",
            )
        if not await AccessRepository(connection).patient_exists(patient_id):
            raise FhirError(404, "not-found", f"Patient/{patient_id} is not known")
        grant = await self._grant(
            connection, principal, patient_id, "break-glass", reason, source, reuse=False
        )
        BREAK_GLASS.labels(principal.organization).inc()
        log.warning(
            "break-glass access",
            extra={
                "client_id": principal.client_id,
                "organization": principal.organization,
                "patient": f"Patient/{patient_id}",
                "grant": str(grant.id),
            },
        )
        return grant

    async def revoke(
        self, connection: asyncpg.Connection, principal: Principal, grant_id: uuid.UUID
    ) -> None:
        if not await AccessRepository(connection).revoke_grant(grant_id, principal.client_id):
            raise FhirError(404, "not-found", "no such grant of yours in force")

    async def require_patient(
        self, connection: asyncpg.Connection, principal: Principal, patient_id: str
    ) -> Access:
        """403 unless the principal may read this person's record now (the workstation asks
        before showing a patient; queries apply the same filter row by row)."""
        access = await self.access(connection, principal)
        if principal.kind in SCOPED_KINDS and not await self.visible(
            connection, access.filter, "Patient", patient_id
        ):
            raise forbidden(
                "no purpose of use for this patient: open them from your patient list or an "
                "order, or use emergency access (break-glass) with a reason"
                if principal.kind == ClientKind.DOCTOR
                else "no consultation grants you access to this patient (it may have ended)"
            )
        return access

    async def _grant(
        self,
        connection: asyncpg.Connection,
        principal: Principal,
        patient_id: str,
        purpose: str,
        reason: str | None,
        source: str,
        reuse: bool = True,
    ) -> Grant:
        repository = AccessRepository(connection)
        now = datetime.now(UTC)
        lifetime = self.lifetimes.of(purpose)
        if reuse:
            # One row per patient and purpose while it lasts (not one per page view).
            found = await repository.find_grant(
                principal.client_id, patient_id, purpose, now + lifetime / 2
            )
            if found is not None:
                return Grant(found.id, purpose, patient_id, found.expires_at)
        expires = now + lifetime
        grant_id = await repository.add_grant(
            principal.client_id,
            principal.organization,
            patient_id,
            purpose,
            reason,
            source,
            expires,
        )
        return Grant(grant_id, purpose, patient_id, expires)

    @staticmethod
    def _require_doctor(principal: Principal) -> None:
        if principal.kind != ClientKind.DOCTOR:
            raise forbidden(f"a {principal.kind} caller cannot establish a doctor's purpose")


def grant_json(grant: Grant) -> dict[str, Any]:
    return {
        "id": str(grant.id),
        "purpose": grant.purpose,
        "purposeOfUse": PURPOSE_OF_USE[grant.purpose],
        "patient": f"Patient/{grant.patient_id}",
        "expires": grant.expires_at.isoformat(),
    }
