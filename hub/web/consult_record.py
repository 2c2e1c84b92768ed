"""What a consultation page shows of a patient's record: FHIR resources as plain rows.

The consultant's page gets exactly what ``RecordService.everything`` returned for their
principal (the consult's scope), and the doctor's form lists the results they may read now;
this module only turns those stored resources into the few fields a page shows — a lab value
with its unit, reference range and flags, a study with its UID for the viewer, a report's
conclusion — and never reads anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from hub.storage.resources import StoredResource

DICOM_UID_SYSTEM = "urn:dicom:uid"
CONSULT_CATEGORY = "11429006"  # SNOMED CT "Consultation": the consult's own request and reply
# Interpretation codes (v3 ObservationInterpretation) shown as abnormal.
ABNORMAL = frozenset({"H", "HH", "HU", "L", "LL", "LU", "A", "AA", "POS", "R", "W"})


@dataclass(frozen=True)
class LabRow:
    key: str  # Observation/<id>
    name: str
    value: str
    unit: str
    range: str
    flags: tuple[str, ...]
    when: str
    performer: str

    @property
    def abnormal(self) -> bool:
        return any(f in ABNORMAL for f in self.flags)


@dataclass(frozen=True)
class StudyRow:
    key: str  # ImagingStudy/<id>
    uid: str | None
    description: str
    modalities: str
    when: str
    series: int
    instances: int


@dataclass(frozen=True)
class ReportRow:
    key: str  # DiagnosticReport/<id>
    name: str
    conclusion: str
    when: str
    status: str
    consult_note: bool


@dataclass(frozen=True)
class PatientHeader:
    key: str
    name: str
    gender: str
    birth_date: str
    identifiers: tuple[str, ...]


@dataclass
class RecordView:
    """A record split into what the page shows, in the order the service returned it."""

    patients: list[PatientHeader] = field(default_factory=list)
    labs: list[LabRow] = field(default_factory=list)
    studies: list[StudyRow] = field(default_factory=list)
    reports: list[ReportRow] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.labs or self.studies or self.reports)

    @property
    def patient(self) -> PatientHeader | None:
        return self.patients[0] if self.patients else None

    def keys(self) -> list[str]:
        return (
            [r.key for r in self.labs]
            + [r.key for r in self.studies]
            + [r.key for r in self.reports]
        )


def _text(concept: Any) -> str:
    """A CodeableConcept as words: its text, else a coding's display, else a code."""
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    for coding in codings:
        if coding.get("display"):
            return str(coding["display"])
    return " ".join(str(c.get("code")) for c in codings if c.get("code"))


def _quantity(value: Any) -> str:
    if not isinstance(value, dict) or "value" not in value:
        return ""
    return f"{value.get('comparator', '')}{value['value']}"


def _when(resource: dict[str, Any]) -> str:
    for name in ("effectiveDateTime", "started", "issued", "authoredOn"):
        if isinstance(resource.get(name), str):
            return str(resource[name])[:16].replace("T", " ")
    period = resource.get("effectivePeriod")
    if isinstance(period, dict) and isinstance(period.get("start"), str):
        return str(period["start"])[:16].replace("T", " ")
    return ""


def _performer(resource: dict[str, Any]) -> str:
    for ref in resource.get("performer") or []:
        if isinstance(ref, dict):
            return str(ref.get("display") or ref.get("reference") or "")
    return ""


def _range(observation: dict[str, Any]) -> str:
    for item in observation.get("referenceRange") or []:
        if not isinstance(item, dict):
            continue
        if item.get("text"):
            return str(item["text"])
        low, high = _quantity(item.get("low")), _quantity(item.get("high"))
        if low and high:
            return f"{low}–{high}"
        if low:
            return f"≥{low}"
        if high:
            return f"≤{high}"
    return ""


def lab_row(key: str, observation: dict[str, Any]) -> LabRow:
    unit = ""
    quantity = observation.get("valueQuantity")
    if isinstance(quantity, dict):
        value = _quantity(quantity)
        unit = str(quantity.get("unit") or quantity.get("code") or "")
    elif "valueString" in observation:
        value = str(observation["valueString"])
    elif "valueCodeableConcept" in observation:
        value = _text(observation["valueCodeableConcept"])
    else:
        value = ""
    flags = tuple(
        str(coding["code"])
        for concept in observation.get("interpretation") or []
        if isinstance(concept, dict)
        for coding in concept.get("coding") or []
        if isinstance(coding, dict) and coding.get("code")
    )
    return LabRow(
        key,
        _text(observation.get("code")) or key,
        value,
        unit,
        _range(observation),
        flags,
        _when(observation),
        _performer(observation),
    )


def study_uid(study: dict[str, Any]) -> str | None:
    """The Study Instance UID of an ImagingStudy (its ``urn:dicom:uid`` identifier)."""
    for identifier in study.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") == DICOM_UID_SYSTEM:
            value = str(identifier.get("value") or "")
            return value.removeprefix("urn:oid:") or None
    return None


def study_row(key: str, study: dict[str, Any]) -> StudyRow:
    modalities = {
        str(c.get("code"))
        for c in study.get("modality") or []
        if isinstance(c, dict) and c.get("code")
    }
    for series in study.get("series") or []:
        modality = series.get("modality") if isinstance(series, dict) else None
        if isinstance(modality, dict) and modality.get("code"):
            modalities.add(str(modality["code"]))
    series_list = [s for s in study.get("series") or [] if isinstance(s, dict)]
    return StudyRow(
        key,
        study_uid(study),
        str(study.get("description") or _text((study.get("procedureCode") or [None])[0]) or ""),
        " ".join(sorted(modalities)),
        _when(study),
        int(study.get("numberOfSeries") or len(series_list)),
        int(study.get("numberOfInstances") or 0),
    )


def report_row(key: str, report: dict[str, Any]) -> ReportRow:
    categories = {
        str(coding.get("code"))
        for concept in report.get("category") or []
        if isinstance(concept, dict)
        for coding in concept.get("coding") or []
        if isinstance(coding, dict)
    }
    return ReportRow(
        key,
        _text(report.get("code")) or key,
        str(report.get("conclusion") or ""),
        _when(report),
        str(report.get("status") or ""),
        CONSULT_CATEGORY in categories,
    )


def patient_header(key: str, patient: dict[str, Any]) -> PatientHeader:
    names = [n for n in patient.get("name") or [] if isinstance(n, dict)]
    name = ""
    if names:
        first = names[0]
        name = str(first.get("text") or (first.get("family", "") + "".join(first.get("given", []))))
    identifiers = tuple(
        str(i.get("value"))
        for i in patient.get("identifier") or []
        if isinstance(i, dict) and i.get("value")
    )
    return PatientHeader(
        key,
        name,
        str(patient.get("gender") or ""),
        str(patient.get("birthDate") or ""),
        identifiers,
    )


def masked_name(name: str) -> str:
    """A name as a list shows it: the surname (first character) and stars (王**)."""
    name = name.strip()
    return name[:1] + "*" * max(len(name) - 1, 1) if name else ""


def record_view(resources: list[StoredResource], patient_id: str | None = None) -> RecordView:
    """Split stored resources into a page's rows; ``patient_id``'s record heads the patients.

    The consult's own request and consent are not shown as clinical content.
    """
    view = RecordView()
    seen: set[str] = set()
    for stored in resources:
        key = f"{stored.resource_type}/{stored.resource_id}"
        if stored.content is None or stored.deleted or key in seen:
            continue
        seen.add(key)
        body: dict[str, Any] = orjson.loads(stored.content)
        if stored.resource_type == "Patient":
            header = patient_header(key, body)
            if stored.resource_id == patient_id:
                view.patients.insert(0, header)
            else:
                view.patients.append(header)
        elif stored.resource_type == "Observation":
            view.labs.append(lab_row(key, body))
        elif stored.resource_type == "ImagingStudy":
            view.studies.append(study_row(key, body))
        elif stored.resource_type == "DiagnosticReport":
            view.reports.append(report_row(key, body))
    return view
