"""A patient's record as the workstation reads it: ``$everything`` through the records
service (the caller's purposes of use filter every row; the unit of work notes what was read
for the audit record), the hospitals' names, and what each sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from hub.fhir.outcomes import FhirError
from hub.records.service import RecordService
from hub.records.unit_of_work import UnitOfWork
from hub.security.principals import Principal
from hub.workstation.finder import is_master

RECORD_TYPES = "Patient,Observation,DiagnosticReport,ImagingStudy,Organization"
PAGE_SIZE = 500
MAX_RESOURCES = 5000  # a very long record is cut here (newest pages are not guaranteed)


@dataclass
class PatientRecord:
    patient_id: str
    patients: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    organizations: dict[str, str] = field(default_factory=dict)  # id → name
    owners: dict[str, str] = field(default_factory=dict)  # Type/id → sending organization
    truncated: bool = False

    @property
    def master(self) -> dict[str, Any]:
        """The master Patient (else the record asked for) for the header."""
        for patient in self.patients:
            if is_master(patient):
                return patient
        for patient in self.patients:
            if patient.get("id") == self.patient_id:
                return patient
        return self.patients[0] if self.patients else {}

    def organization_name(self, organization: str | None) -> str:
        if not organization:
            return ""
        return self.organizations.get(organization, organization)


async def load_record(
    records: RecordService, uow: UnitOfWork, principal: Principal, patient_id: str
) -> PatientRecord:
    """Every result of the person the principal may read now (403/404 from the service)."""
    record = PatientRecord(patient_id)
    query: dict[str, str] = {"_type": RECORD_TYPES, "_count": str(PAGE_SIZE)}
    seen: set[str] = set()
    while True:
        page, referenced = await records.everything(uow, principal, patient_id, query, PAGE_SIZE)
        for stored in [*page.rows, *referenced]:
            key = f"{stored.resource_type}/{stored.resource_id}"
            if stored.content is None or key in seen:
                continue
            seen.add(key)
            resource = orjson.loads(stored.content)
            if stored.resource_type == "Patient":
                record.patients.append(resource)
            elif stored.resource_type == "Organization":
                record.organizations[stored.resource_id] = str(
                    resource.get("name") or stored.resource_id
                )
            else:
                record.results.append(resource)
                if stored.owner_org:
                    record.owners[key] = stored.owner_org
        if page.next_cursor is None:
            break
        if len(seen) >= MAX_RESOURCES:
            record.truncated = True
            break
        query = {**query, "_cursor": page.next_cursor.encode()}
    _registered_owners(record)
    return record


def _registered_owners(record: PatientRecord) -> None:
    """A result whose sender is not known (a study written by the DICOM receiver) is shown
    as from the hospital its Patient record belongs to."""
    managing = {}
    for patient in record.patients:
        reference = (patient.get("managingOrganization") or {}).get("reference") or ""
        if reference.startswith("Organization/"):
            managing[f"Patient/{patient.get('id')}"] = reference.split("/", 1)[1]
    for resource in record.results:
        key = f"{resource.get('resourceType')}/{resource.get('id')}"
        subject = (resource.get("subject") or {}).get("reference") or ""
        if key not in record.owners and subject in managing:
            record.owners[key] = managing[subject]


async def organization_names(
    records: RecordService, uow: UnitOfWork, principal: Principal, ids: list[str]
) -> dict[str, str]:
    """Names of Organizations (a directory type every signed-in role may read)."""
    names: dict[str, str] = {}
    for organization in ids:
        try:
            stored = await records.read(uow, principal, "Organization", organization)
        except FhirError:
            names[organization] = organization
            continue
        content = orjson.loads(stored.content or "{}")
        names[organization] = str(content.get("name") or organization)
    return names
