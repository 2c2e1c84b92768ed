"""Result facts: the few elements of a clinical result that "is there a recent result?" needs.

Observations, DiagnosticReports and ImagingStudies each yield one row per code they carry
(``idx_result``), written and replaced with the resource's other index rows. The recognition
rules engine finds a patient's candidate results with one index range scan on
(patient, code, effective) instead of joining the generic search indexes; the rules
themselves (windows, quality control, scope) stay in ``hub.recognition``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from hub.fhir.datetimes import DateFormatError, parse_range
from hub.fhir.references import split_reference

RESULT_TYPES = frozenset({"Observation", "DiagnosticReport", "ImagingStudy"})
DICOM_MODALITY = "http://dicom.nema.org/resources/ontology/DCM"


@dataclass(frozen=True)
class ResultFact:
    """One code of one result.

    ``site`` is an imaging body site (SNOMED code) for modality rows; ``group`` ties rows that
    belong together (an order's Observations and report; a study and its report); ``flags`` are
    the interpretation codes (``H``, ``LL``...) separated by spaces.
    """

    patient_id: str
    system: str
    code: str
    site: str | None
    effective: datetime | None
    status: str
    performer: str | None
    group: str | None
    flags: str


def result_facts(resource: dict[str, Any], zone: tzinfo, base_url: str = "") -> list[ResultFact]:
    """The facts of one resource version (empty for other types or without a local patient).

    ``base_url`` is the hub's FHIR base: absolute references to it are local, others are not.
    """
    kind = resource.get("resourceType")
    if kind not in RESULT_TYPES:
        return []

    def _local_id(reference: Any, resource_type: str) -> str | None:
        if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
            return None
        target_type, target_id, _ = split_reference(reference["reference"], base_url)
        return target_id if target_type == resource_type and target_id else None

    patient = _local_id(resource.get("subject"), "Patient")
    if patient is None:
        return []
    status = str(resource.get("status") or "unknown")
    performer = next(
        (
            org
            for ref in resource.get("performer") or []
            if (org := _local_id(ref, "Organization")) is not None
        ),
        None,
    )
    effective = effective_of(resource, zone)
    codes: list[tuple[str, str, str | None]] = []
    if kind == "ImagingStudy":
        group: str | None = f"ImagingStudy/{resource.get('id')}"
        codes.extend((s, c, None) for s, c in _codings(resource.get("procedureCode")))
        codes.extend(_modality_sites(resource))
        flags = ""
    else:
        group = _group(resource, base_url)
        codes.extend((s, c, None) for s, c in _codings(resource.get("code")))
        flags = " ".join(
            code for system, code in _codings(resource.get("interpretation")) if system
        )
    return [
        ResultFact(patient, system, code, site, effective, status, performer, group, flags)
        for system, code, site in dict.fromkeys(codes)
    ]


def _codings(value: Any) -> list[tuple[str, str]]:
    """(system, code) of a CodeableConcept or a list of them."""
    concepts = value if isinstance(value, list) else [value]
    out: list[tuple[str, str]] = []
    for concept in concepts:
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and coding.get("code"):
                out.append((str(coding.get("system") or ""), str(coding["code"])))
    return out


def effective_of(resource: Mapping[str, Any], zone: tzinfo) -> datetime | None:
    """When a result was taken (its effective time, a study's start, else its issue)."""
    candidates = [
        resource.get("effectiveDateTime"),
        resource.get("effectiveInstant"),
        (resource.get("effectivePeriod") or {}).get("start"),
        resource.get("started"),
        resource.get("issued"),
    ]
    for value in candidates:
        if isinstance(value, str):
            try:
                return parse_range(value, zone)[0]
            except DateFormatError:
                continue
    return None


def _group(resource: dict[str, Any], base_url: str) -> str | None:
    """An imaging report groups with its study; lab results with their order."""
    for element in ("imagingStudy", "basedOn"):
        for ref in resource.get(element) or []:
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                target_type, target_id, url = split_reference(ref["reference"], base_url)
                return f"{target_type}/{target_id}" if target_type else url
    return None


def _modality_sites(study: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    rows: list[tuple[str, str, str | None]] = []
    for series in study.get("series") or []:
        if not isinstance(series, dict):
            continue
        modality = series.get("modality")
        if not isinstance(modality, dict) or not modality.get("code"):
            continue
        site = series.get("bodySite")
        site_code = site.get("code") if isinstance(site, dict) else None
        rows.append((DICOM_MODALITY, str(modality["code"]), str(site_code) if site_code else None))
    for modality in study.get("modality") or []:
        if isinstance(modality, dict) and modality.get("code"):
            rows.append((DICOM_MODALITY, str(modality["code"]), None))
    return rows
