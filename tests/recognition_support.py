"""Hospitals with regions and quality-control passes, and their results, for the recognition
tests: everything arrives through the API as a hospital would send it."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from tests.conftest import Client, HubUnderTest

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
EXT = "https://yijian-hub.org/fhir/StructureDefinition/"
SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime.now(UTC)
# CBC analytes (LOINC) with a value, unit and reference range.
CBC = [
    ("6690-2", "白细胞计数", 6.2, "10*9/L", (3.5, 9.5)),
    ("789-8", "红细胞计数", 4.5, "10*12/L", (3.8, 5.1)),
    ("718-7", "血红蛋白", 135, "g/L", (115, 150)),
    ("777-3", "血小板计数", 210, "10*9/L", (125, 350)),
]


def days_ago(days: float) -> str:
    return (NOW - timedelta(days=days)).astimezone(SHANGHAI).isoformat(timespec="seconds")


def day(offset: int) -> str:
    return (NOW + timedelta(days=offset)).astimezone(SHANGHAI).date().isoformat()


def qc(discipline: str, start: str, end: str) -> dict[str, Any]:
    return {
        "url": EXT + "organization-qc-pass",
        "extension": [
            {"url": "discipline", "valueCode": discipline},
            {"url": "period", "valuePeriod": {"start": start, "end": end}},
            {"url": "program", "valueString": "浙江省临床检验中心室间质评"},
        ],
    }


@dataclass
class Hospital:
    id: str
    name: str
    client: Client  # its hospital client (FHIR base URL), also its EHR's CDS client
    http: httpx.Client  # the same token at the hub's root (CDS Hooks, /recognition)


def register_hospital(
    hub: HubUnderTest,
    admin: Client,
    name: str,
    region: str | None,
    *,
    community: str | None = None,
    passes: list[dict[str, Any]] | None = None,
) -> Hospital:
    extensions: list[dict[str, Any]] = []
    if region:
        extensions.append({"url": EXT + "organization-region", "valueCode": region})
    if community:
        extensions.append({"url": EXT + "organization-medical-community", "valueString": community})
    body = {
        "resourceType": "Organization",
        "active": True,
        "name": name,
        "identifier": [{"system": "https://yijian.example/hospital", "value": uuid.uuid4().hex}],
        "extension": extensions + (passes or []),
    }
    response = admin.post("/Organization", json=body)
    assert response.status_code == 201, response.text
    org = response.json()["id"]
    record = json.loads(
        hub.cli(
            "clients", "add", "--kind", "hospital", "--organization", org, "--name", name, "--json"
        ).stdout
    )
    token = hub.token(record["client_id"], record["client_secret"]).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    client = Client(
        record["client_id"],
        record["client_secret"],
        org,
        httpx.Client(base_url=hub.fhir, timeout=30, headers=headers),
    )
    http = httpx.Client(base_url=hub.base_url, timeout=30, headers=headers)
    return Hospital(org, name, client, http)


def transaction(client: Client, resources: list[dict[str, Any]]) -> dict[str, str]:
    """POST a transaction of new resources (``fullUrl`` urn:uuid each); urn → Type/id."""
    entries = []
    for resource in resources:
        urn = resource.pop("_urn")
        entries.append(
            {
                "fullUrl": urn,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
    response = client.post(
        "", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    assert response.status_code == 200, response.text
    out = {}
    for entry, answer in zip(entries, response.json()["entry"], strict=True):
        location = answer["response"]["location"]
        out[entry["fullUrl"]] = "/".join(location.split("/")[:2])
    return out


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def cbc_panel(
    hospital: Hospital,
    patient_id: str,
    when: str,
    *,
    analytes: list[tuple[str, str, float, str, tuple[float, float]]] | None = None,
    flags: dict[str, str] | None = None,
    status: str = "final",
    panel_code: bool = True,
) -> dict[str, str]:
    """An order, its results and their report, written by ``hospital``; urn → Type/id."""
    org = {"reference": f"Organization/{hospital.id}"}
    subject = {"reference": f"Patient/{patient_id}"}
    order = urn()
    resources: list[dict[str, Any]] = [
        {
            "_urn": order,
            "resourceType": "ServiceRequest",
            "status": "completed",
            "intent": "order",
            "code": {"coding": [{"system": LOINC, "code": "58410-2"}], "text": "血常规"},
            "subject": subject,
            "performer": [org],
        }
    ]
    results = []
    for code, name, value, unit, (low, high) in analytes or CBC:
        ref = urn()
        results.append({"reference": ref})
        observation: dict[str, Any] = {
            "_urn": ref,
            "resourceType": "Observation",
            "status": status,
            "basedOn": [{"reference": order}],
            "code": {"coding": [{"system": LOINC, "code": code}], "text": name},
            "subject": subject,
            "effectiveDateTime": when,
            "performer": [org],
            "valueQuantity": {
                "value": value,
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": unit,
            },
            "referenceRange": [{"low": {"value": low}, "high": {"value": high}}],
        }
        if flags and code in flags:
            observation["interpretation"] = [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                            "code": flags[code],
                        }
                    ]
                }
            ]
        resources.append(observation)
    report: dict[str, Any] = {
        "_urn": urn(),
        "resourceType": "DiagnosticReport",
        "status": status,
        "basedOn": [{"reference": order}],
        "code": {
            "coding": [{"system": LOINC, "code": "58410-2"}]
            if panel_code
            else [{"system": "https://yijian.example/local", "code": "CBC"}],
            "text": "血常规",
        },
        "subject": subject,
        "effectiveDateTime": when,
        "performer": [org],
        "result": results,
    }
    resources.append(report)
    return transaction(hospital.client, resources)


def ct_chest(hospital: Hospital, patient_id: str, when: str, conclusion: str) -> dict[str, str]:
    """A chest CT study and its final report (the report names the study)."""
    subject = {"reference": f"Patient/{patient_id}"}
    study = urn()
    resources: list[dict[str, Any]] = [
        {
            "_urn": study,
            "resourceType": "ImagingStudy",
            "status": "available",
            "subject": subject,
            "started": when,
            "modality": [{"system": DCM, "code": "CT"}],
            "description": "胸部CT平扫",
            "series": [
                {
                    "uid": f"2.25.{uuid.uuid4().int}",
                    "modality": {"system": DCM, "code": "CT"},
                    "bodySite": {"system": SNOMED, "code": "51185008", "display": "Thorax"},
                }
            ],
        },
        {
            "_urn": urn(),
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {
                "coding": [{"system": "https://yijian.example/ris", "code": "CT-CHEST"}],
                "text": "胸部CT平扫",
            },
            "subject": subject,
            "effectiveDateTime": when,
            "performer": [{"reference": f"Organization/{hospital.id}"}],
            "imagingStudy": [{"reference": study}],
            "conclusion": "双肺未见明显异常。" + conclusion,
        },
    ]
    return transaction(hospital.client, resources)


def draft_orders(*orders: tuple[str, list[dict[str, str]]]) -> dict[str, Any]:
    """A draftOrders Bundle of ServiceRequests: (id, codings) each."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "ServiceRequest",
                    "id": order_id,
                    "status": "draft",
                    "intent": "order",
                    "code": {"coding": codings},
                    "subject": {"reference": "Patient/ehr-123"},
                }
            }
            for order_id, codings in orders
        ],
    }


def hook_request(
    hook: str,
    patient: dict[str, Any] | None,
    orders: dict[str, Any],
    *,
    patient_id: str = "ehr-123",
    user: str = "Practitioner/dr-li",
    selections: list[str] | None = None,
    department: str | None = None,
) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": user, "patientId": patient_id, "draftOrders": orders}
    if hook == "order-select":
        context["selections"] = selections or [
            f"ServiceRequest/{e['resource']['id']}" for e in orders["entry"]
        ]
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if patient is not None:
        body["prefetch"] = {"patient": patient}
    if department:
        body["extension"] = {"org.yijian-hub.department": department}
    return body
