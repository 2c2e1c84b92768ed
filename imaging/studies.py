"""A DICOM study as a FHIR R4 ImagingStudy, by the official mapping (FHIR R4 ImagingStudy
"Mappings" → DICOM), built from the index rows; pure.

The study is identified by ``urn:dicom:uid`` (``urn:oid:<StudyInstanceUID>``) and by its
accession number (type ACSN, in the hospital's accession system, so an imaging report with
the same accession number is linked to it by the records service, whichever comes first).
Modalities are DICOM DCM codes; a series' Body Part Examined becomes a SNOMED CT body site
(PS3.16 Annex L), which is what the recognition catalogue's imaging items name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any

DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
ENDPOINT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "dicom-wado-rs",
}
ENDPOINT_SYSTEM = "https://yijian-hub.org/fhir/sid/endpoint"

# Body Part Examined (0018,0015) defined terms → SNOMED CT (PS3.16 Annex L, CID 4031).
BODY_PARTS: dict[str, tuple[str, str]] = {
    "ABDOMEN": ("818983003", "Abdomen"),
    "ANKLE": ("70258002", "Ankle joint"),
    "BRAIN": ("12738006", "Brain"),
    "BREAST": ("76752008", "Breast"),
    "CHEST": ("51185008", "Chest"),
    "CSPINE": ("122494005", "Cervical spine"),
    "ELBOW": ("127949000", "Elbow"),
    "FOOT": ("56459004", "Foot"),
    "HAND": ("85562004", "Hand"),
    "HEAD": ("69536005", "Head"),
    "HEART": ("80891009", "Heart"),
    "HIP": ("29836001", "Hip"),
    "KIDNEY": ("64033007", "Kidney"),
    "KNEE": ("72696002", "Knee"),
    "LIVER": ("10200004", "Liver"),
    "LSPINE": ("122496007", "Lumbar spine"),
    "NECK": ("45048000", "Neck"),
    "PELVIS": ("816092008", "Pelvis"),
    "SHOULDER": ("16982005", "Shoulder"),
    "SKULL": ("89546000", "Skull"),
    "SPINE": ("421060004", "Spine"),
    "THYROID": ("69748006", "Thyroid"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "WHOLEBODY": ("38266002", "Entire body"),
    "WRIST": ("74670003", "Wrist joint"),
}


def study_identifier(study_uid: str) -> dict[str, str]:
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}


def endpoint(organization: str, address: str, name: str) -> dict[str, Any]:
    """The hospital's DICOMweb Endpoint (the hub's /dicomweb, which serves its studies)."""
    return {
        "resourceType": "Endpoint",
        "identifier": [{"system": ENDPOINT_SYSTEM, "value": f"dicomweb-{organization}"}],
        "status": "active",
        "connectionType": ENDPOINT_TYPE,
        "name": name,
        "managingOrganization": {"reference": f"Organization/{organization}"},
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": address,
    }


def imaging_study(
    study: Mapping[str, Any],
    series: Sequence[Mapping[str, Any]],
    instances: Sequence[Mapping[str, Any]],
    *,
    subject: str,
    endpoint_ref: str,
    accession_system: str,
    zone: tzinfo | None = None,
) -> dict[str, Any]:
    """The ImagingStudy of one study: ``study`` is its dicom_study row, ``series`` its series
    rows, ``instances`` its instance rows (series_uid, sop_instance_uid, sop_class_uid,
    instance_number), ``subject`` the Patient reference, ``endpoint_ref`` the Endpoint's;
    times are written in ``zone`` (the hub's default zone)."""
    by_series: dict[str, list[Mapping[str, Any]]] = {}
    for instance in instances:
        by_series.setdefault(instance["series_uid"], []).append(instance)
    identifiers: list[dict[str, Any]] = [study_identifier(study["study_uid"])]
    if study.get("accession"):
        identifiers.append({"type": ACSN, "system": accession_system, "value": study["accession"]})
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": subject},
        "endpoint": [{"reference": endpoint_ref}],
        "numberOfSeries": len(series),
        "numberOfInstances": len(instances),
    }
    modalities = [m for m in study.get("modalities") or [] if m]
    if modalities:
        resource["modality"] = [{"system": DCM, "code": m} for m in modalities]
    if isinstance(study.get("started"), datetime):
        resource["started"] = study["started"].astimezone(zone).isoformat()
    if study.get("referring"):
        resource["referrer"] = {"display": _person_name(study["referring"])}
    if study.get("description"):
        resource["description"] = study["description"]
    resource["series"] = [
        _series(row, by_series[row["series_uid"]], endpoint_ref, zone)
        for row in sorted(series, key=_series_order)
        if by_series.get(row["series_uid"])  # FHIR has no empty series
    ]
    if not resource["series"]:
        del resource["series"]
    return resource


def _series(
    row: Mapping[str, Any],
    instances: Sequence[Mapping[str, Any]],
    endpoint_ref: str,
    zone: tzinfo | None,
) -> dict[str, Any]:
    series: dict[str, Any] = {"uid": row["series_uid"]}
    if _unsigned(row.get("series_number")):
        series["number"] = row["series_number"]
    series["modality"] = {"system": DCM, "code": row.get("modality") or "OT"}
    if row.get("description"):
        series["description"] = row["description"]
    series["numberOfInstances"] = len(instances)
    series["endpoint"] = [{"reference": endpoint_ref}]
    part = (row.get("body_part") or "").strip().upper()
    if part in BODY_PARTS:
        code, display = BODY_PARTS[part]
        series["bodySite"] = {"system": SNOMED, "code": code, "display": display}
    elif part:
        series["bodySite"] = {"display": part}
    laterality = (row.get("laterality") or "").strip().upper()
    if laterality in _LATERALITY:
        code, display = _LATERALITY[laterality]
        series["laterality"] = {"system": SNOMED, "code": code, "display": display}
    if isinstance(row.get("started"), datetime):
        series["started"] = row["started"].astimezone(zone).isoformat()
    series["instance"] = [
        _instance(i) for i in sorted(instances, key=lambda i: i.get("instance_number") or 0)
    ]
    return series


def _instance(row: Mapping[str, Any]) -> dict[str, Any]:
    instance: dict[str, Any] = {
        "uid": row["sop_instance_uid"],
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{row['sop_class_uid']}"},
    }
    if _unsigned(row.get("instance_number")):
        instance["number"] = row["instance_number"]
    return instance


def _unsigned(number: Any) -> bool:
    """FHIR's unsignedInt: a DICOM IS may be negative, which has no place in the number."""
    return isinstance(number, int) and 0 <= number <= 2**31 - 1


_LATERALITY = {"L": ("7771000", "Left"), "R": ("24028007", "Right")}


def _series_order(row: Mapping[str, Any]) -> tuple[int, str]:
    number = row.get("series_number")
    return (number if isinstance(number, int) else 1 << 30, str(row["series_uid"]))


def _person_name(value: str) -> str:
    """A DICOM PN (family^given^middle^prefix^suffix, ideographic after '=') for display."""
    alphabetic, _, ideographic = value.partition("=")
    chosen = ideographic.split("=")[0] if ideographic.strip("=^ ") else alphabetic
    parts = [p for p in chosen.split("^") if p]
    if not parts:
        return value
    if all(ord(c) > 0x2E7F for c in "".join(parts)):  # CJK: family name first, no spaces
        return "".join(parts[:2])
    return " ".join([*parts[1:2], parts[0]])
